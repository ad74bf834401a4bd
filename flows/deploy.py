"""Register the cycle flow as a deployment in a work pool of a shared Prefect server.

`baldflow serve` (flows/serve.py) keeps one process alive that both holds the schedule and runs
the cycles: when it stops, the cycles stop. Teams instead register the deployment once on a
persistent server and let `prefect worker start --pool POOL` processes, on whichever machines
have baldflow installed, pick the scheduled runs up. This module does the registering; the
worker does the rest.

No code is uploaded or pulled: the deployment names its flow by module path
(`baldflow.flows.cycle.cycle_flow`, Prefect's form for a module path has no colon), which a
flow-run process imports from the installed package whatever its working directory, and the
deployment has no pull steps. A worker therefore needs baldflow installed in the Python it runs
and the workspace at the same path as the deploying machine saw it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.types.entrypoint import EntrypointType

from baldflow.config import ConfigError, parse_override
from baldflow.preflight import PreflightError
from baldflow.workspace.repo import OFFLINE_ENVIRONMENT

# The cycle flow (and with it torch) is imported only where a deployment is built: a refusal
# (no server, a name taken) should come in a second, not after the imports of a whole round.
FLOW_NAME = "baldflow-cycle"
POOL_TYPE = "process"


def deployment_name(campaign: str) -> str:
    """The default deployment name, `baldflow serve`'s too: one name per campaign, however
    its cycles are run."""
    return f"{campaign}-cycle"


class DeploymentConflictError(LookupError):
    """A deployment of that name already cycles another workspace (a LookupError: the CLI
    reports it as "no such thing here" with exit status 1, and the user picks another name)."""


@dataclasses.dataclass(frozen=True)
class CycleDeployment:
    """What `deploy_cycle` registered, and what to tell whoever runs the workers."""

    id: UUID
    flow_name: str
    name: str
    pool: str
    pool_type: str
    pool_created: bool
    work_queue: str | None
    parameters: dict[str, Any]

    @property
    def full_name(self) -> str:
        """`flow/deployment`: what `prefect deployment run` and `run_deployment` take."""
        return f"{self.flow_name}/{self.name}"

    def worker_command(self) -> str:
        argv = ["prefect", "worker", "start", "--pool", self.pool]
        if self.work_queue:
            argv += ["--work-queue", self.work_queue]
        return shlex.join(argv)


def persistent_api_url() -> str:
    """The Prefect API this process talks to, once it is known to be a server that answers.

    Refuses when none is configured (PREFECT_API_URL, in the environment or the active Prefect
    profile): Prefect would then start a temporary server that takes the deployment with it
    when this command exits, and no worker elsewhere could reach it anyway.
    """
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise LookupError(
            "baldflow deploy needs a persistent Prefect server that the workers reach too, and "
            "PREFECT_API_URL is not set: start one (`baldflow server`, or `prefect server "
            "start` on a shared machine) and export PREFECT_API_URL=http://HOST:4200/api"
        )
    with get_client(sync_client=True) as client:
        error = client.api_healthcheck()
    if error is not None:
        raise PreflightError(
            f"the Prefect server at PREFECT_API_URL={url} does not answer ({error}); start it, "
            "or point PREFECT_API_URL at the team's server"
        )
    return url


def cycle_overrides(campaign: str, overrides: Sequence[str]) -> list[str]:
    """The deployment's overrides: the user's, then `campaign.name=<campaign>`.

    Every run re-reads the workspace's params.yaml (so edits there reach the next cycle); the
    name pinned last keeps the deployment on its campaign even if params.yaml later names
    another. An override naming a different campaign contradicts --campaign: refused.
    """
    for text in overrides:
        path, value = parse_override(text)
        if path == ["campaign", "name"] and str(value) != campaign:
            raise ConfigError(
                f"--set {text} contradicts --campaign {campaign}; drop one of them",
                fields=("campaign.name",),
            )
    return [*overrides, f"campaign.name={campaign}"]


def job_environment(workspace: Path) -> dict[str, str]:
    """Environment of every flow-run process the worker starts (on top of the worker's own).

    The flow-run process imports prefect, DVC and MLflow before the flow body could set
    anything, so the telemetry switches must already be in its environment; its PREFECT_HOME is
    the workspace's own .prefect/ (git-ignored), as for `baldflow run`, so whatever a run
    writes there stays with the workspace instead of the worker's home directory.
    """
    return {**OFFLINE_ENVIRONMENT, "PREFECT_HOME": str(workspace / ".prefect")}


def _ensure_pool(client, pool: str, work_queue: str | None) -> tuple[str, bool]:
    """Create the work pool (type process) and queue if missing: (the pool's type, created).

    A pool that exists is used as it is, whatever its type: it is shared, and its owner may
    have set it up on purpose (a Kubernetes pool whose image has baldflow installed).
    """
    created = False
    try:
        pool_type = client.read_work_pool(pool).type
    except ObjectNotFound:
        from prefect.workers.process import ProcessWorker

        try:
            client.create_work_pool(
                WorkPoolCreate(
                    name=pool,
                    type=POOL_TYPE,
                    description="baldflow cycles: workers need baldflow installed",
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                )
            )
            created = True
        except ObjectAlreadyExists:
            pass  # another deployer created it meanwhile: use theirs
        pool_type = client.read_work_pool(pool).type
    if work_queue:
        try:
            client.read_work_queue_by_name(work_queue, work_pool_name=pool)
        except ObjectNotFound:
            # The server refuses a deployment into a queue that does not exist yet.
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_work_queue(name=work_queue, work_pool_name=pool)
    return pool_type, created


def check_name_free(workspace: str | Path, name: str) -> None:
    """Refuse to repoint deployment `name` of the cycle flow if it cycles another workspace.

    Deployment names are unique per flow on the whole server: two people whose campaigns
    share a name would otherwise silently take each other's schedule over.
    """
    full_name = f"{FLOW_NAME}/{name}"
    mine = str(Path(workspace).resolve())
    with get_client(sync_client=True) as client:
        try:
            existing = client.read_deployment_by_name(full_name)
        except ObjectNotFound:
            return
    theirs = (existing.parameters or {}).get("workspace")
    if theirs and theirs != mine:
        raise DeploymentConflictError(
            f"deployment {full_name} on this Prefect server already cycles workspace {theirs}, "
            f"not {mine}; give this one another name (--name)"
        )


def _check_cron(cron: str) -> None:
    """A wrong cron expression is the user's to fix, said in one line (not a pydantic dump)."""
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron)
    except ValueError:
        raise ConfigError(
            f"--cron {cron!r} is not a cron expression (5 fields: minute hour day-of-month "
            "month day-of-week, e.g. '0 * * * *' for hourly)"
        ) from None


def deploy_cycle(
    workspace: str | Path,
    campaign: str,
    *,
    pool: str,
    cron: str | None = None,
    interval: float | None = None,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    work_queue: str | None = None,
    name: str | None = None,
) -> CycleDeployment:
    """Create or update the deployment of the cycle flow for `campaign` in `workspace`.

    Idempotent: deploying again with the same name updates its schedule, parameters and pool
    in place (and replaces the scheduled runs not started yet). Needs a persistent Prefect
    server (PREFECT_API_URL) before prefect is imported: a temporary one would take the
    deployment with it. The work pool (type process) and queue are created when missing.

    At most one cycle of the deployment runs at a time: a run triggered while another is
    running is cancelled at once rather than queued (a round takes as long as it takes; a
    queue of stale triggers would only run rounds back to back later). Cycles from elsewhere
    (`baldflow cycle`, another deployment) are kept out by the workspace lock, which makes the
    cycle end as "Skipped".
    """
    if (cron is None) == (interval is None):
        raise ValueError("give exactly one of cron or interval")
    if cron is not None:
        _check_cron(cron)
    persistent_api_url()
    root = Path(workspace).resolve()
    parameters = {
        "workspace": str(root),
        "config": str(Path(config).resolve()) if config else None,
        "overrides": cycle_overrides(campaign, overrides),
        # A started campaign keeps the parameters it started with (see load_cycle_config).
        "campaign": campaign,
    }
    from baldflow.flows.cycle import cycle_flow
    from baldflow.flows.outcome import identity_tags

    if cycle_flow.name != FLOW_NAME:
        raise RuntimeError(f"FLOW_NAME is {FLOW_NAME!r}, the flow is named {cycle_flow.name!r}")
    name = name or deployment_name(campaign)
    check_name_free(root, name)
    with get_client(sync_client=True) as client:
        pool_type, created = _ensure_pool(client, pool, work_queue)
    deployment = cycle_flow.to_deployment(
        name=name,
        cron=cron,
        interval=interval,
        parameters=parameters,
        description=f"One active-learning round of campaign {campaign} in {root} per run.",
        # Whose schedule it is: a scheduled run's tags name the operator who deployed it.
        tags=["baldflow", *identity_tags(root, campaign, os.environ.get("MLFLOW_TRACKING_URI"))],
        concurrency_limit=ConcurrencyLimitConfig(
            limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW
        ),
        work_pool_name=pool,
        work_queue_name=work_queue,
        job_variables={"env": job_environment(root)},
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    deployment_id = deployment.apply()
    return CycleDeployment(
        id=deployment_id,
        flow_name=FLOW_NAME,
        name=name,
        pool=pool,
        pool_type=pool_type,
        pool_created=created,
        work_queue=work_queue,
        parameters=parameters,
    )
