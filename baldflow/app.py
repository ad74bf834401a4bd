"""baldflow's application layer, its public Python API: what each `baldflow` command does,
with typed arguments and results and no printing (the CLI in baldflow/cli/ formats them).

Errors are the typed ones the CLI maps to exit codes: ConfigError (a parameter, 2),
PreflightError or LabelStudioError (what this machine lacks, 5), WorkspaceLockedError (another
run holds the workspace, 3), LabelImportError (a label file refused, 4), and
FileNotFoundError, LookupError (AuditError, NoPendingBatchError) or WorkspaceError (no such
workspace, campaign, round or file, 1).

Long operations take `progress`, a callable given each line worth telling a person while they
run ("starting Prefect...", the temporary server's address, a label import's count); by
default nothing is said. Heavy modules (torch, prefect, mlflow, dvc) are imported inside the
functions: importing this module is cheap, and Prefect's settings are in place before it is
imported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from baldflow.config import Config
    from baldflow.labeling import HandOff, PendingRound
    from baldflow.workspace import LedgerRow
    from baldflow.workspace.finished import Finished

DEFAULT_WORKSPACE = "baldflow-workspace"

Progress = Callable[[str], None]


def _quiet(line: str) -> None:
    """The default `progress`: say nothing."""


# ---------------------------------------------------------------------------- arguments
@dataclasses.dataclass(frozen=True)
class RunRequest:
    """Which campaign to run, resume or advance by a cycle, and with which parameters.

    workspace: the workspace directory (None: $BALDFLOW_WORKSPACE, the current directory if it
    is a workspace, else ./baldflow-workspace). config: a parameter file (None: the
    workspace's params.yaml, else the built-in defaults). overrides: `SECTION.KEY=VALUE`
    strings, values read as YAML. campaign: resume this campaign with its recorded parameters
    (None: the campaign that campaign.name names).
    """

    workspace: str | Path | None = None
    config: str | Path | None = None
    overrides: Sequence[str] = ()
    campaign: str | None = None


# ---------------------------------------------------------------------------- results
@dataclasses.dataclass(frozen=True)
class CampaignOutcome:
    """How a run, a cycle or a round completed by labels ended.

    record: the flow's result (campaign, workspace, stopped, last_round, rounds, timings,
    tracking_uri, experiment, waiting_for_labels when it stopped for labels), the record the
    CLI prints. ran: False when there was nothing to do, answered from the workspace without
    a server or a flow run; finished then says why (every round done, or a batch still out).
    config: the parameters it ran with (None for a round completed by a label import or pull,
    which runs with the batch's recorded parameters).
    """

    record: dict[str, Any]
    config: Config | None = None
    ran: bool = True
    finished: Finished | None = None

    @property
    def campaign(self) -> str:
        return self.record["campaign"]

    @property
    def workspace(self) -> Path:
        return Path(self.record["workspace"])

    @property
    def stopped(self) -> str:
        """rounds, round-limit (a cycle's one round), pool-empty, waiting-for-labels, or
        workspace-busy (a cycle that found another round running)."""
        return self.record["stopped"]

    @property
    def last_round(self) -> int | None:
        return self.record.get("last_round")

    @property
    def rounds(self) -> list[dict[str, Any]]:
        """rounds.csv's rows: one per committed round, round 0 first."""
        return self.record.get("rounds", [])

    @property
    def waiting_for_labels(self) -> dict[str, Any] | None:
        """The batch out for labels (round, sheet, batch_size, studio), if the run stopped so."""
        return self.record.get("waiting_for_labels")

    @property
    def busy(self) -> bool:
        return self.stopped == "workspace-busy"


@dataclasses.dataclass(frozen=True)
class InitOutcome:
    root: Path
    params_path: Path
    git_remote: str | None = None
    dvc_remote: str | None = None


@dataclasses.dataclass(frozen=True)
class JoinOutcome:
    root: Path
    url: str
    dvc_remote: str
    last_rounds: dict[str, int | None]


@dataclasses.dataclass(frozen=True)
class LabelOutcome:
    """A label import or pull: how much of the pending batch is labeled, and the round it
    completed, if it did (`completed`; None when the batch is not complete yet or the caller
    asked not to complete it)."""

    campaign: str
    round: int
    added: int
    labeled: int
    batch_size: int
    completed: CampaignOutcome | None = None
    decisions: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """Every sample of the batch has its label."""
        return self.labeled == self.batch_size


@dataclasses.dataclass(frozen=True)
class CampaignStatus:
    """One campaign of `status` (its fields and their order are `status --format json`'s)."""

    campaign: str
    strategy: str | None
    rounds_done: int | None
    rounds_asked: int | None
    labeled: int
    latest_test_accuracy: float | None
    latest_tag: str | None


@dataclasses.dataclass(frozen=True)
class WaitingBatch:
    """A batch out for labels: in a sheet, or in a Label Studio project."""

    campaign: str
    round: int
    imported: int
    batch_size: int
    sheet: Path
    studio_project: int | str | None = None
    studio_address: str | None = None
    rounds_asked: int | None = None

    @property
    def beyond_length(self) -> bool:
        """Its round lies past the length the campaign records (its import extends it)."""
        return self.rounds_asked is not None and self.round > self.rounds_asked


@dataclasses.dataclass(frozen=True)
class WorkspaceStatus:
    root: Path
    campaigns: list[CampaignStatus]
    waiting: list[WaitingBatch]


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    """What `verify` found: each campaign's problems (none: consistent)."""

    root: Path
    problems: dict[str, list[str]]

    @property
    def consistent(self) -> bool:
        return not any(self.problems.values())


# ---------------------------------------------------------------------------- parameters
def default_workspace() -> str:
    """$BALDFLOW_WORKSPACE, else "." inside a workspace, else ./baldflow-workspace."""
    env = os.environ.get("BALDFLOW_WORKSPACE")
    if env:
        return env
    # Inside a workspace already (cd'ed into it), use it rather than a nested one.
    from baldflow.workspace.repo import Workspace

    if Workspace.is_workspace(Path.cwd()):
        return "."
    return DEFAULT_WORKSPACE


def workspace_root(workspace: str | Path | None) -> Path:
    """The absolute workspace directory `workspace` names (None: default_workspace())."""
    return Path(workspace or default_workspace()).resolve()


def resolve_config(
    workspace: str | Path,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    campaign: str | None = None,
) -> Config:
    """A run's parameters: the file (or params.yaml, or defaults) and overrides; with
    `campaign`, its recorded identity in between, so resuming it needs no override repeated."""
    from baldflow.config import ConfigError, load_config

    ws_root = Path(workspace)
    path = config
    if path is None and (ws_root / "params.yaml").exists():
        path = ws_root / "params.yaml"
    if campaign is None:
        return load_config(path, list(overrides))
    from baldflow.preflight import recorded_identity

    loaded = load_config(path, list(overrides), identity=recorded_identity(ws_root, campaign))
    if loaded.campaign.name != campaign:
        raise ConfigError(
            f"--campaign {campaign} and campaign.name={loaded.campaign.name} disagree; "
            f"fix: drop --set campaign.name (--campaign resumes {campaign}), or drop --campaign "
            "to start a new campaign",
            fields=("campaign.name",),
        )
    return loaded


# ---------------------------------------------------------------------------- workspaces
def init_workspace(
    directory: str | Path | None = None,
    *,
    config: str | Path | None = None,
    dvc_remote: str | None = None,
    git_remote: str | None = None,
) -> InitOutcome:
    """Create a workspace: git, DVC with a remote, params.yaml (a copy of `config`, validated
    first, else the defaults); with `git_remote`, shared through it."""
    from baldflow.config import dump_yaml, load_config
    from baldflow.workspace import Workspace

    directory = directory or default_workspace()
    if config:
        load_config(config)  # validate before creating anything
        text = Path(config).read_text()
    else:
        text = dump_yaml(load_config(None, check_names=False))
    ws = Workspace.init(directory, params_text=text, remote=dvc_remote)
    dvc_url = None
    if git_remote:
        from baldflow.workspace import remote

        remote.connect(ws, git_remote)
        dvc_url = remote.dvc_remote_url(ws)
    ws.close()
    return InitOutcome(ws.root, ws.params_path, git_remote, dvc_url)


def join_workspace(url: str, directory: str | Path | None = None) -> JoinOutcome:
    """Another operator's copy of a shared workspace: clone its git remote into `directory`
    and pull its data from the DVC remote it names."""
    from baldflow.workspace import remote

    ws = remote.clone(url, directory or default_workspace())
    campaigns = ws.campaigns()
    dvc_url = remote.dvc_remote_url(ws)
    ws.close()
    return JoinOutcome(ws.root, url, dvc_url, {name: ws.last_round(name) for name in campaigns})


# ---------------------------------------------------------------------------- servers
def prepare_prefect(ws_root: Path) -> None:
    """Prefect's settings (telemetry off, its home in the workspace, quiet task-run logs):
    before anything imports prefect, which reads them once."""
    from baldflow.workspace import offline_environment

    offline_environment(ws_root)
    # One line per round from the flow is the progress report; the "Finished in state
    # Completed()" line of each task would bury it (task states stay visible in the UI).
    os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL", "WARNING")


def start_prefect_api(ws_root: Path, progress: Progress = _quiet) -> None:
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


def _say_where_on_interrupt(ws_root: Path, campaign: str, rounds: int) -> None:
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
    from baldflow.preflight import check as preflight
    from baldflow.workspace import Workspace, WorkspaceLockedError, workspace_lock

    ws_root = workspace_root(request.workspace)
    # Before anything imports prefect: it reads its settings once, at import.
    prepare_prefect(ws_root)
    # What flows.cycle.load_cycle_config reads (--config, else the workspace's params.yaml),
    # without importing the flow: prefect must not be imported before its API is chosen.
    config = resolve_config(ws_root, request.config, request.overrides, request.campaign)
    preflight(config, ws_root)
    _say_where_on_interrupt(ws_root, config.campaign.name, config.campaign.rounds)
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
    request: RunRequest | None = None, *, progress: Progress = _quiet
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

        result = campaign_flow(
            workspace=str(ws_root), params=config.to_dict(), campaign=config.campaign.name
        )
    return CampaignOutcome(result, config)


def run_cycle(request: RunRequest | None = None, *, progress: Progress = _quiet) -> CampaignOutcome:
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

        return CampaignOutcome(cycle_flow(workspace=str(ws_root), params=config.to_dict()), config)


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
    from baldflow.preflight import check as preflight  # before the schedule, not at its first run

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


@dataclasses.dataclass(frozen=True)
class DeployOutcome:
    """A cycle deployment on a shared Prefect server: `deployment` is flows.deploy's record
    (full_name, pool, pool_type, pool_created, worker_command())."""

    api_url: str
    root: Path
    campaign: str
    deployment: Any


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
    from baldflow.flows.cycle import load_cycle_config
    from baldflow.preflight import check as preflight

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


# ---------------------------------------------------------------------------- labels
def pending_batch(
    workspace: str | Path | None = None, campaign: str | None = None
) -> tuple[HandOff, PendingRound]:
    """The one batch waiting for labels (of `campaign`, if given): its hand-off and record."""
    from baldflow.labeling import NoPendingBatchError, pending_batches

    ws_root = workspace_root(workspace)
    batches = pending_batches(ws_root)
    if campaign is not None:
        batches = [(h, p) for h, p in batches if h.campaign == campaign]
    if not batches:
        which = f"campaign {campaign!r}" if campaign else "any campaign"
        raise NoPendingBatchError(f"no batch of {which} is waiting for labels in {ws_root}")
    if len(batches) > 1:
        names = ", ".join(h.campaign for h, _ in batches)
        raise NoPendingBatchError(f"batches of {names} are waiting for labels: pass --campaign")
    return batches[0]


def import_labels(
    file: str | Path,
    *,
    workspace: str | Path | None = None,
    campaign: str | None = None,
    partial: bool = False,
    labeled_by: str | None = None,
    complete: bool = True,
    progress: Progress = _quiet,
) -> LabelOutcome:
    """Check a label file (sample_id, label) against the batch waiting for labels and store
    its labels; the import that completes the batch completes the round (DVC, git, MLflow)
    unless `complete` is False. A refused file raises LabelImportError and stores nothing.

    labeled_by: who labeled, for the ledger (None: $BALDFLOW_OPERATOR, the MLflow user of an
    authenticated tracking server, the workspace's git identity, else login@host).
    """
    from baldflow.labeling import import_labels as store_labels
    from baldflow.workspace import Workspace, remote, workspace_lock

    ws_root = workspace_root(workspace)
    handoff, pending = pending_batch(ws_root, campaign)
    with workspace_lock(ws_root):
        tracking_uri = ((pending.params.get("tracking") or {}).get("mlflow_uri")) or None
        by = labeled_by or remote.operator(Workspace(ws_root), tracking_uri)
        result = store_labels(handoff, file, partial=partial, labeled_by=by)
        progress(
            f"imported {result.added} label(s) for round {result.round} of "
            f"{handoff.campaign}: {result.labeled} of {result.batch_size} labeled"
        )
        completed = None
        if result.complete and complete:
            completed = _complete_round(ws_root, handoff, pending, progress)
    return LabelOutcome(
        handoff.campaign, result.round, result.added, result.labeled, result.batch_size, completed
    )


def pull_labels(
    *,
    workspace: str | Path | None = None,
    campaign: str | None = None,
    resend: bool = False,
    complete: bool = True,
    progress: Progress = _quiet,
) -> LabelOutcome:
    """With oracle `label-studio`: fetch the pending batch's annotations from its Label Studio
    project (with `resend`, first send deleted tasks again); once every task is annotated the
    labels are stored and, unless `complete` is False, the round completes. Annotations that
    cannot be accepted raise LabelImportError and store nothing."""
    from baldflow.config import ConfigError, validate
    from baldflow.labeling.label_studio import client_for
    from baldflow.labeling.studio_rounds import pull_annotations, send_batch
    from baldflow.workspace import Workspace, workspace_lock

    ws_root = workspace_root(workspace)
    handoff, pending = pending_batch(ws_root, campaign)
    with workspace_lock(ws_root):
        # The batch's own parameters: where its server is and how disagreements are settled.
        config = validate(dict(pending.params))
        if config.oracle.kind != "label-studio":
            raise ConfigError(
                f"campaign {handoff.campaign!r} hands its batches out as files (oracle.kind "
                f"{config.oracle.kind!r}): use `baldflow label import`"
            )
        client = client_for(config.oracle.label_studio, ws_root)
        if resend:
            with Workspace(ws_root) as ws:
                workspace_id = ws.workspace_id
            sent = send_batch(
                client, handoff, pending, workspace_id=workspace_id, images=None, resend=True
            )
            progress(
                f"sent {sent.imported} task(s) again to Label Studio project {sent.project_id}"
            )
        pulled = pull_annotations(
            client, handoff, pending, conflicts=config.oracle.label_studio.conflicts
        )
        progress(
            f"round {pulled.round} of {handoff.campaign}: {pulled.annotated} of "
            f"{pulled.batch_size} annotated in Label Studio project {pulled.project_id} "
            f"({client.project_address(pulled.project_id)})"
        )
        for decision in pulled.decisions:
            progress(f"  {decision}")
        completed = None
        if pulled.complete and complete:
            completed = _complete_round(ws_root, handoff, pending, progress)
    return LabelOutcome(
        handoff.campaign,
        pulled.round,
        pulled.annotated,
        pulled.annotated,
        pulled.batch_size,
        completed,
        tuple(pulled.decisions),
    )


def _complete_round(
    ws_root: Path, handoff: HandOff, pending: PendingRound, progress: Progress
) -> CampaignOutcome:
    """A labeled batch's round completed by one cycle (under the caller's workspace lock)."""
    prepare_prefect(ws_root)
    rounds = (pending.params.get("campaign") or {}).get("rounds")
    if rounds is not None:
        _say_where_on_interrupt(ws_root, handoff.campaign, int(rounds))
    progress("batch complete; completing the round (version, track)...")
    start_prefect_api(ws_root, progress)
    from baldflow.flows.cycle import cycle_flow

    return CampaignOutcome(cycle_flow(workspace=str(ws_root), params=pending.params))


# ---------------------------------------------------------------------------- audit
def _existing_workspace(workspace: str | Path | None) -> Path:
    from baldflow.workspace import Workspace

    ws_root = workspace_root(workspace)
    if not Workspace.is_workspace(ws_root):
        raise FileNotFoundError(f"{ws_root} is not a baldflow workspace (run `baldflow init`)")
    return ws_root


def history(
    workspace: str | Path | None = None,
    *,
    campaign: str | None = None,
    round: int | None = None,
    sample: str | None = None,
) -> list[LedgerRow]:
    """The ledger's rows (one per acquired sample), filtered by campaign, round, sample id."""
    from baldflow.workspace import Workspace

    ws_root = _existing_workspace(workspace)
    ws = Workspace(ws_root)
    names = ws.campaigns()
    if campaign is not None:
        if campaign not in names:
            known = ", ".join(names) or "none yet"
            raise LookupError(f"campaign {campaign!r} is not in {ws_root} (campaigns: {known})")
        names = [campaign]
    rows = []
    for name in names:
        rows.extend(ws.ledger(name))
    if round is not None:
        rows = [r for r in rows if r.round == round]
    if sample is not None:
        rows = [r for r in rows if r.sample_id == sample]
    return rows


def sample_story(
    sample: str, *, workspace: str | Path | None = None, campaign: str | None = None
) -> dict[str, Any]:
    """One sample's whole story: the round that acquired it, its score, key and rank in every
    round whose pool scores were kept. An id not in the pool raises AuditError."""
    from baldflow.audit.queries import sample_story as story

    return story(workspace_root(workspace), sample, campaign)


def show_round(
    round: int,
    *,
    workspace: str | Path | None = None,
    campaign: str | None = None,
) -> dict[str, Any]:
    """One completed round: its batch, class histogram, tag, commit and MLflow run."""
    from baldflow.audit import queries

    return queries.show_round(workspace_root(workspace), round, campaign)


def diff_rounds(
    from_round: int,
    to_round: int,
    *,
    workspace: str | Path | None = None,
    campaign: str | None = None,
) -> dict[str, Any]:
    """What the labeled set gained (and, if history was rewritten, lost) between two rounds,
    read through DVC at both tags."""
    from baldflow.audit import queries

    return queries.diff_rounds(workspace_root(workspace), from_round, to_round, campaign)


def write_report(
    *,
    workspace: str | Path | None = None,
    campaign: str | None = None,
    output: str | Path | None = None,
) -> Path:
    """A self-contained HTML report of a campaign; its path."""
    from baldflow.audit.report import write_report as write

    return Path(write(workspace_root(workspace), campaign, output))


def status(workspace: str | Path | None = None) -> WorkspaceStatus:
    """Every campaign of the workspace (rounds done, labeled count, latest accuracy and tag)
    and every batch waiting for labels."""
    import yaml

    from baldflow.labeling import pending_batches
    from baldflow.labeling.label_studio import project_address
    from baldflow.labeling.studio_rounds import StudioLink
    from baldflow.workspace import Workspace

    ws_root = _existing_workspace(workspace)
    ws = Workspace(ws_root)
    campaigns = []
    for name in ws.campaigns():
        rounds = ws.rounds_summary(name)
        done = ws.completed_rounds(name)
        accuracy = next(
            (float(r["test_accuracy"]) for r in reversed(rounds) if r.get("test_accuracy")), None
        )
        params_file = ws.campaign_dir(name) / "campaign.yaml"
        params = yaml.safe_load(params_file.read_text()) if params_file.exists() else {}
        campaigns.append(
            CampaignStatus(
                campaign=name,
                strategy=(params.get("acquisition") or {}).get("strategy"),
                rounds_done=done[-1] if done else None,
                # The campaign's length as it records it (None in records older than that).
                rounds_asked=(params.get("campaign") or {}).get("rounds"),
                labeled=len(ws.labeled(name)),
                latest_test_accuracy=accuracy,
                latest_tag=f"{name}/round-{done[-1]:04d}" if done else None,
            )
        )
    lengths = {c.campaign: c.rounds_asked for c in campaigns}
    waiting = []
    for handoff, pending in pending_batches(ws_root):
        link = StudioLink.load(handoff)
        sent = link.rounds.get(str(pending.round))
        project = sent["project_id"] if sent else None
        waiting.append(
            WaitingBatch(
                campaign=handoff.campaign,
                round=pending.round,
                imported=len(set(handoff.imported(pending.round)) & set(pending.sample_ids)),
                batch_size=len(pending.sample_ids),
                sheet=handoff.sheet_path(pending.round),
                studio_project=project,
                studio_address=project_address(link.url, project) if sent else None,
                rounds_asked=lengths.get(handoff.campaign),
            )
        )
    return WorkspaceStatus(ws_root, campaigns, waiting)


def verify(
    workspace: str | Path | None = None,
    *,
    campaign: str | None = None,
    tracking_uri: str | None = None,
    experiment: str | None = None,
) -> VerifyReport:
    """Check a workspace at rest: tags, the labeled sets DVC versioned, the ledger and the
    MLflow runs agree. Takes the workspace lock (WorkspaceLockedError while a run writes)."""
    from baldflow.workspace import workspace_lock
    from baldflow.workspace.consistency import check_workspace

    ws_root = _existing_workspace(workspace)
    if tracking_uri is None or experiment is None:
        from baldflow.config import load_config

        params = ws_root / "params.yaml"
        tracking = load_config(params if params.exists() else None, check_names=False).tracking
        tracking_uri = tracking_uri or tracking.mlflow_uri
        experiment = experiment or tracking.experiment
    # A run writing to the workspace breaks the rules mid-round: judge it only at rest.
    with workspace_lock(ws_root):
        found = check_workspace(
            ws_root,
            [campaign] if campaign else None,
            tracking_uri=tracking_uri,
            experiment=experiment,
        )
    return VerifyReport(ws_root, found)
