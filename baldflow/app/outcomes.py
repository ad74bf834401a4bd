"""Typed requests and outcomes of the application layer, and the `progress` callback type."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from baldflow.config import Config
    from baldflow.workspace.finished import Finished




DEFAULT_WORKSPACE = "baldflow-workspace"

Progress = Callable[[str], None]


def say_nothing(line: str) -> None:
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




@dataclasses.dataclass(frozen=True)
class DeployOutcome:
    """A cycle deployment on a shared Prefect server: `deployment` is flows.deploy's record
    (full_name, pool, pool_type, pool_created, worker_command())."""

    api_url: str
    root: Path
    campaign: str
    deployment: Any


