"""Cycles on a schedule: served from this process, or deployed to a shared Prefect server."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from baldflow.app.campaigns import prepare_prefect
from baldflow.app.outcomes import DeployOutcome, RunRequest
from baldflow.app.workspaces import workspace_root

if TYPE_CHECKING:
    from baldflow.config import Config




# ---------------------------------------------------------------------------- schedules
def _check_interval(interval: float | None) -> None:
    if interval is not None and interval <= 0:
        from baldflow.config import ConfigError

        raise ConfigError(f"--interval must be > 0 seconds, got {interval}")


def _ensure_workspace(ws_root: Path, config: Config) -> None:
    from baldflow.config import dump_yaml
    from baldflow.workspace import Workspace, workspace_lock

    ws_root.mkdir(parents=True, exist_ok=True)
    with workspace_lock(ws_root):
        if not Workspace.is_ready(ws_root):
            Workspace.init(ws_root, params_text=dump_yaml(config)).close()


def schedule_cycle(
    request: RunRequest,
    *,
    cron: str | None = None,
    interval: float | None = None,
    command: str = "schedule",
) -> None:
    """Run a cycle on a schedule through the persistent Prefect server of PREFECT_API_URL, in
    this process, until it is stopped (Ctrl-C pauses the schedule). `command` names the
    caller in the refusal when no server is configured."""
    ws_root = workspace_root(request.workspace)
    # Before anything imports prefect: it reads its settings once, at import.
    prepare_prefect(ws_root)
    from baldflow.flows.cycle import load_cycle_config

    overrides = list(request.overrides)
    if request.campaign is not None:
        from baldflow.flows.deploy import cycle_overrides

        overrides = cycle_overrides(request.campaign, overrides)  # refuses a contradicting --set
    config = load_cycle_config(ws_root, request.config, overrides, request.campaign)
    if not os.environ.get("PREFECT_API_URL"):
        raise LookupError(
            f"baldflow {command} needs a persistent Prefect server (a temporary one cannot "
            "schedule): start one with `baldflow server` and export "
            "PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    _check_interval(interval)
    from baldflow.app.campaigns import preflight  # before the schedule, not at its first run

    preflight(config, ws_root)
    _ensure_workspace(ws_root, config)
    from baldflow.flows.serve import serve_cycle

    serve_cycle(
        ws_root,
        config.campaign.name,
        cron=cron,
        interval=interval,
        config=request.config,
        overrides=list(request.overrides),
        resume=request.campaign is not None,
    )


def deploy_cycle(
    request: RunRequest,
    *,
    pool: str,
    cron: str | None = None,
    interval: float | None = None,
    work_queue: str | None = None,
    name: str | None = None,
) -> DeployOutcome:
    """Create or update a deployment of the cycle of request.campaign on the Prefect server
    of PREFECT_API_URL, in work pool `pool` (created if missing), with a schedule."""
    if request.campaign is None:
        raise LookupError("a deployment cycles one campaign: name it (--campaign NAME)")
    ws_root = workspace_root(request.workspace)
    # Telemetry off before prefect is imported, but PREFECT_HOME left alone: a team's server
    # is often configured in the user's Prefect profile, which lives in their PREFECT_HOME.
    from baldflow.workspace import offline_environment

    offline_environment()
    _check_interval(interval)
    from baldflow.flows import deploy

    # Refusals first, before anything is created.
    api_url = deploy.persistent_api_url()
    deploy.check_name_free(ws_root, name or deploy.deployment_name(request.campaign))
    from baldflow.app.campaigns import preflight
    from baldflow.flows.cycle import load_cycle_config

    # What every run will load (params.yaml or --config, then --set, then the campaign's
    # name), checked now rather than at the first scheduled run, on a worker, unattended.
    overrides = deploy.cycle_overrides(request.campaign, list(request.overrides))
    config = load_cycle_config(ws_root, request.config, overrides, request.campaign)
    preflight(config, ws_root)
    _ensure_workspace(ws_root, config)
    deployment = deploy.deploy_cycle(
        ws_root,
        request.campaign,
        pool=pool,
        cron=cron,
        interval=interval,
        config=request.config,
        overrides=list(request.overrides),
        work_queue=work_queue,
        name=name,
    )
    return DeployOutcome(api_url, ws_root, request.campaign, deployment)


