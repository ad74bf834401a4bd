"""Running a campaign or one cycle of it: the shared prelude (Prefect, preflight, lock, nothing to
do), the flow call and its outcome."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from baldflow.app.outcomes import CampaignOutcome, Progress, RunRequest, say_nothing
from baldflow.app.workspaces import resolve_config, workspace_root

if TYPE_CHECKING:
    from baldflow.config import Config
    from baldflow.workspace.finished import Finished




# ---------------------------------------------------------------------------- servers
def prepare_prefect(ws_root: Path) -> None:
    """Prefect's settings (telemetry off, its home in the workspace, quiet task-run logs):
    before anything imports prefect, which reads them once."""
    from baldflow.workspace import offline_environment

    offline_environment(ws_root)
    # One line per round from the flow is the progress report; the "Finished in state
    # Completed()" line of each task would bury it (task states stay visible in the UI).
    os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL", "WARNING")


def start_prefect_api(ws_root: Path, progress: Progress = say_nothing) -> None:
    """The configured Prefect API, else a temporary server of ours for this process.

    Call after prepare_prefect and before anything imports prefect. The server runs in its
    own session, so a Ctrl-C cannot kill it under the run while the run still records how it
    ended, and it is stopped by PID however the process ends (see baldflow.stack). Under the
    CLI's interrupt handler, a server that dies anyway stops the command within seconds with
    one line instead of retrying it for minutes.
    """
    from baldflow.stack.interrupts import active
    from baldflow.stack.prefect_server import use_prefect_api

    server = use_prefect_api(os.environ.get("PREFECT_HOME") or ws_root / ".prefect")
    if server is None:
        return
    progress(
        f"baldflow: temporary Prefect server on {server.url} "
        f"(ready in {server.startup_seconds:.1f} s)"
    )
    handler = active()
    if handler is not None:
        server.watch(
            lambda status: handler.abort(
                f"the temporary Prefect server on {server.url} stopped unexpectedly (exit "
                f"status {status}; its log: {server.log_path})"
            )
        )


def preflight(config: Config, ws_root: Path) -> None:
    """baldflow.preflight.check, handed the workspace's own Label Studio server by this layer,
    which runs servers: preflight, like labeling, never locates one."""
    from functools import partial

    from baldflow.preflight import check
    from baldflow.stack.label_studio import workspace_connection

    check(config, ws_root, partial(workspace_connection, ws_root))


def say_where_on_interrupt(ws_root: Path, campaign: str, rounds: int) -> None:
    """Make a Ctrl-C, SIGTERM or a dead server end with one line on where the campaign stands
    (when the CLI's interrupt handler is active)."""
    from baldflow.stack.interrupts import active

    handler = active()
    if handler is not None:
        handler.describe = lambda: where_campaign_stands(ws_root, campaign, rounds)


def where_campaign_stands(ws_root: Path, campaign: str, rounds: int) -> str:
    """One line on the last completed round, which a rerun resumes from."""
    from baldflow.workspace import Workspace

    # The tags are what the next run resumes from (it also repairs whatever the stop left).
    last = Workspace(ws_root).last_round(campaign)
    if last is None:
        return f"campaign {campaign!r} stopped during round 0; no round is completed yet"
    if last >= rounds:
        return f"campaign {campaign!r} stopped; all its {rounds} rounds are completed"
    return (
        f"campaign {campaign!r} stopped during round {last + 1}; round {last} is the last "
        "completed; run again to resume"
    )


# ---------------------------------------------------------------------------- run and cycle
@dataclasses.dataclass(frozen=True)
class _Prepared:
    root: Path
    config: Config
    finished: Finished | None


@contextlib.contextmanager
def _campaign_prelude(
    request: RunRequest, *, hold_lock: bool, copy_config_file: bool
) -> Iterator[_Prepared]:
    """What a run and a cycle do before their flow: Prefect's settings, the parameters,
    preflight (one-line errors before any server), the workspace lock, creating the workspace,
    and the nothing-to-do check, answered from the workspace without a server or a flow run.

    hold_lock: a run keeps the lock for the whole body and fails at once on a busy workspace;
    a cycle releases it before the body, and on a busy workspace goes on to its flow, which
    records the skipped trigger. copy_config_file: a new workspace's params.yaml is a copy of
    request.config (a run), else the resolved parameters (a cycle).
    """
    from baldflow.config import dump_yaml
    from baldflow.workspace import Workspace, WorkspaceLockedError, workspace_lock

    ws_root = workspace_root(request.workspace)
    # Before anything imports prefect: it reads its settings once, at import.
    prepare_prefect(ws_root)
    # What flows.cycle.load_cycle_config reads (--config, else the workspace's params.yaml),
    # without importing the flow: prefect must not be imported before its API is chosen.
    config = resolve_config(ws_root, request.config, request.overrides, request.campaign)
    preflight(config, ws_root)
    say_where_on_interrupt(ws_root, config.campaign.name, config.campaign.rounds)
    ws_root.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as held:
        # Taken before Prefect's server starts: a second writer fails in a second or two.
        # Creating the workspace is writing to it too (and completes a creation that was killed).
        try:
            held.enter_context(workspace_lock(ws_root))
            locked = True
        except WorkspaceLockedError:
            if hold_lock:
                raise
            locked = False  # the cycle's flow records the skipped trigger
        if not locked:
            yield _Prepared(ws_root, config, None)
            return
        if not Workspace.is_ready(ws_root):
            text = (
                Path(request.config).read_text()
                if copy_config_file and request.config
                else dump_yaml(config)
            )
            Workspace.init(ws_root, params_text=text).close()
        finished = nothing_to_do(ws_root, config)
        if not hold_lock:
            held.close()
        yield _Prepared(ws_root, config, finished)


def run_campaign(
    request: RunRequest | None = None, *, progress: Progress = say_nothing
) -> CampaignOutcome:
    """Run the campaign `request` describes, or resume it at its last completed round,
    creating the workspace first if needed; returns when every round is done, the pool is
    empty, or a batch waits for people's labels. Holds the workspace lock throughout."""
    request = request or RunRequest()
    with _campaign_prelude(request, hold_lock=True, copy_config_file=True) as prepared:
        ws_root, config = prepared.root, prepared.config
        if prepared.finished is not None:
            return _finished_outcome(ws_root, prepared.finished, config)
        progress(
            f"baldflow: campaign {config.campaign.name!r} in {ws_root} "
            f"({config.acquisition.strategy}, {config.campaign.rounds} rounds of "
            f"{config.acquisition.batch_size}); starting Prefect..."
        )
        start_prefect_api(ws_root, progress)
        from baldflow.flows.campaign import campaign_flow

        with _identified(ws_root, config):
            result = campaign_flow(
                workspace=str(ws_root), params=config.to_dict(), campaign=config.campaign.name
            )
    return CampaignOutcome(result, config)


def run_cycle(
    request: RunRequest | None = None, *, progress: Progress = say_nothing
) -> CampaignOutcome:
    """Run one round of the campaign from where it stands (round 0 if it has none, else the
    next round or the completion of a batch people labeled), or nothing once it is done. A
    workspace busy with another round gives an outcome with `busy` set."""
    request = request or RunRequest()
    with _campaign_prelude(request, hold_lock=False, copy_config_file=False) as prepared:
        ws_root, config = prepared.root, prepared.config
        if prepared.finished is not None:
            return _finished_outcome(ws_root, prepared.finished, config)
        start_prefect_api(ws_root, progress)
        from baldflow.flows.cycle import cycle_flow

        with _identified(ws_root, config):
            result = cycle_flow(workspace=str(ws_root), params=config.to_dict())
        return CampaignOutcome(result, config)


def _identified(ws_root: Path, config: Config) -> contextlib.AbstractContextManager:
    """Prefect tags around the flow run: campaign, operator, workspace id (flows.outcome)."""
    from baldflow.flows.outcome import identified

    return identified(ws_root, config.campaign.name, config.tracking.mlflow_uri)


def nothing_to_do(ws_root: Path, config: Config) -> Finished | None:
    """The campaign of `config` when a run or cycle would have nothing to do (a Finished of
    baldflow.workspace.finished), else None: every round done, or its next batch out with
    people who have not labeled all of it yet. Read from the workspace in about a second."""
    from baldflow.config import ConfigError, validate
    from baldflow.labeling import HandOff, OracleError
    from baldflow.workspace import Workspace
    from baldflow.workspace.finished import finished_campaign
    from baldflow.workspace.remote import remote_url

    if not Workspace.is_workspace(ws_root):
        return None
    ws = Workspace(ws_root)
    name = config.campaign.name
    handoff = HandOff(ws.campaign_dir(name), name)
    try:
        pending = handoff.pending()
    except OracleError:
        return None  # more than one batch out: the flow says what is wrong
    if pending is None:
        return finished_campaign(ws_root, config)
    try:
        same = validate(dict(pending.params), check_names=False).identity() == config.identity()
    except ConfigError:
        same = False
    missing = (
        same
        # Label Studio: a run pulls what people annotated, which is work to do.
        and config.oracle.kind == "file"
        and not handoff.is_complete(pending)
        # Shared: another clone may have completed the round; a run syncs first.
        and remote_url(ws) is None
    )
    return finished_campaign(ws_root, config, batch_round=pending.round, labels_missing=missing)


def _finished_outcome(ws_root: Path, finished: Finished, config: Config) -> CampaignOutcome:
    """The outcome of a campaign with nothing to do, its record read from the workspace."""
    result: dict[str, Any] = {
        "campaign": finished.campaign,
        "workspace": str(ws_root),
        "stopped": "rounds",
        "last_round": finished.last_round,
        "rounds": finished.rounds,
        "timings": [],
        "tracking_uri": finished.tracking_uri,
        "experiment": config.tracking.experiment,
    }
    if finished.waiting is not None:
        from baldflow.labeling import HandOff
        from baldflow.workspace import Workspace

        handoff = HandOff(Workspace(ws_root).campaign_dir(finished.campaign), finished.campaign)
        pending = handoff.pending()
        result["stopped"] = "waiting-for-labels"
        result["waiting_for_labels"] = {
            "round": pending.round,
            "sheet": str(handoff.sheet_path(pending.round)),
            "batch_size": len(pending.sample_ids),
            "studio": None,
        }
    return CampaignOutcome(result, config, ran=False, finished=finished)


def recorded_bookkeeping(record: dict[str, Any]) -> dict[int, float]:
    """Bookkeeping seconds of the rounds earlier runs completed, as their MLflow runs hold them.

    Best effort: the summary table is a summary, and a tracking store that cannot be read here
    only leaves those cells empty.
    """
    try:
        from baldflow.workspace import Workspace
        from baldflow.workspace.finished import recorded_round_metric
        from baldflow.workspace.tracking import Tracker

        workspace_id = Workspace(record["workspace"]).workspace_id
        experiment = record.get("experiment", "baldflow")
        uri, name = record["tracking_uri"], record["campaign"]
        found = recorded_round_metric(uri, experiment, workspace_id, name, "seconds_bookkeeping")
        if found is not None:
            return found
        tracker = Tracker(uri, experiment, None, workspace_id)
        return {
            int(row["round"]): float(row["seconds_bookkeeping"])
            for row in tracker.round_metrics(record["campaign"])
            if "seconds_bookkeeping" in row
        }
    except Exception:  # noqa: BLE001
        return {}


