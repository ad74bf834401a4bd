"""The modes of a campaign run, chosen once at its start (`choose_modes`): how labels arrive,
where the pool is scored, and whether the workspace syncs with remotes.

Each mode is an object whose methods call tasks; a round calls those methods and never asks
which mode it runs in. Labels: simulated from held-back labels, or given by people through a
file hand-off or Label Studio (their batch stops the run until they answer). Scoring: see
baldflow.flows.scoring. Sync: a workspace of one machine, or a clone of a shared one (team
mode: a git remote), which syncs before each round and claims it by pushing its commit.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

from baldflow import tasks
from baldflow.config import Config
from baldflow.flows.scoring import ScoringHere, ScoringInShards, scoring_mode
from baldflow.flows.slots import slot_holder, workspace_slot
from baldflow.labeling import PendingRound, WaitingForLabels
from baldflow.rounds import CampaignRun, RoundRecord, pending_batch, recorded_campaign_run
from baldflow.tasks import Trained
from baldflow.workspace import RoundCommit

# ------------------------------------------------------------------ how labels arrive


class SimulatedLabels:
    """The oracle answers from held-back labels at once: no batch ever waits for people."""

    def initial_batch(self, c: CampaignRun, record: RoundRecord) -> None:
        """Round 0's labeled set needs nobody."""

    def handed_off(self, c: CampaignRun) -> PendingRound | None:
        return None

    def wait_for_labels(self, c: CampaignRun, pending: PendingRound, round_index: int) -> None:
        """Nothing is ever handed off, so nothing waits."""

    def after_choosing(self, c: CampaignRun, record: RoundRecord, trained: Trained) -> None:
        """The batch is labeled in the same round."""


class FileLabels:
    """People label through files: a chosen batch is handed off with the model that chose it,
    the run stops (WaitingForLabels), and a later run completes the round once the labels are
    imported."""

    def initial_batch(self, c: CampaignRun, record: RoundRecord) -> None:
        """Round 0's batch goes to people first; raises WaitingForLabels until it is labeled."""
        pending = c.handoff.pending()
        if pending is None:
            self._hand_off(c, record, None)
        self.wait_for_labels(c, pending, 0)

    def handed_off(self, c: CampaignRun) -> PendingRound | None:
        """The batch chosen earlier that people are labeling, if any."""
        return c.handoff.pending()

    def after_choosing(self, c: CampaignRun, record: RoundRecord, trained: Trained) -> None:
        """Keep the model, park the round's run and give the batch to people; always raises
        WaitingForLabels."""
        tasks.save_handoff_model(c.handoff, trained, record.round)
        tasks.park_round_run(c.tracker, record, record.round)
        self._hand_off(c, record, trained)

    def wait_for_labels(self, c: CampaignRun, pending: PendingRound, round_index: int) -> None:
        """Check the batch people were given; raise WaitingForLabels until all its labels are
        in."""
        labeled_md5 = c.workspace.labeled_md5(c.name)
        c.handoff.check_pending(pending, round_index, labeled_md5)

    def _hand_off(self, c: CampaignRun, record: RoundRecord, trained: Trained | None) -> None:
        predictions = self._predictions(c, record, trained)
        labeled_md5 = c.workspace.labeled_md5(c.name)
        pending = pending_batch(record, c.config, c.data, labeled_md5, predictions)
        images = c.data.images(pending.sample_ids)
        sheet = tasks.hand_off_batch(c.handoff, pending, images, record.round)
        studio = self._send(c, pending, images)
        raise WaitingForLabels(pending, sheet, 0, studio=studio)

    def _predictions(
        self, c: CampaignRun, record: RoundRecord, trained: Trained | None
    ) -> dict[str, list[float]] | None:
        """Pre-annotations people see beside the batch: none in a file."""
        return None

    def _send(self, c: CampaignRun, pending: PendingRound, images: Any) -> str | None:
        """Where people label the batch besides the sheet: nowhere else."""
        return None


class LabelStudioLabels(FileLabels):
    """People label in the campaign's Label Studio project: the hand-off is also sent there,
    with the model's guesses as pre-annotations, and their annotations are pulled back."""

    def wait_for_labels(self, c: CampaignRun, pending: PendingRound, round_index: int) -> None:
        """First finish an interrupted send and pull what people annotated, then check."""
        labeled_md5 = c.workspace.labeled_md5(c.name)
        pending = c.handoff.check_batch(pending, round_index, labeled_md5)
        studio = self._send(c, pending, c.data.images(pending.sample_ids))
        pulled = tasks.pull_from_label_studio(
            c.config, str(c.workspace.root), c.handoff, pending, round_index
        )
        for decision in pulled.decisions:
            c.logger.warning("round %d: %s", round_index, decision)
        c.handoff.check_pending(pending, round_index, labeled_md5, studio=studio)

    def _predictions(
        self, c: CampaignRun, record: RoundRecord, trained: Trained | None
    ) -> dict[str, list[float]] | None:
        if trained is None:  # round 0 has no model yet
            return None
        return tasks.pre_annotate_batch(
            c.config, c.data, trained, record.sample_ids, record.seed, record.round
        )

    def _send(self, c: CampaignRun, pending: PendingRound, images: Any) -> str:
        """The batch as tasks of the campaign's Label Studio project (a no-op once it was sent,
        so a run killed during the send finishes it); returns the project's address."""
        sent, address = tasks.send_to_label_studio(
            c.config, str(c.workspace.root), c.workspace.workspace_id, c.handoff, pending, images,
            pending.round,
        )  # fmt: skip
        if sent.imported:
            c.logger.info(
                "round %d: %d task(s) imported into Label Studio project %d (%s)",
                pending.round, sent.imported, sent.project_id, address,
            )  # fmt: skip
        return address


LABELING: dict[str, type[SimulatedLabels] | type[FileLabels]] = {
    "simulated": SimulatedLabels,
    "file": FileLabels,
    "label-studio": LabelStudioLabels,
}
Labeling = SimulatedLabels | FileLabels

# ------------------------------------------------------------------ whether the workspace syncs


class LocalWorkspace:
    """A workspace of one machine: the lock file is all the coordination a round needs."""

    def round_slot(self, c: CampaignRun, *, wait: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def level_with_remote(self, c: CampaignRun, last: int | None) -> int | None:
        return last

    def claimed(self, c: CampaignRun, commit: RoundCommit, run_id: str | None) -> bool:
        return True


class SharedWorkspace:
    """A clone of a workspace shared through a git remote (team mode)."""

    @contextlib.contextmanager
    def round_slot(self, c: CampaignRun, *, wait: bool) -> Iterator[str | None]:
        """The workspace's round slot on a shared Prefect server: another clone may hold it
        while it computes a round (`wait`: wait for it, else the run is skipped)."""
        with workspace_slot(
            c.workspace.workspace_id, shared=True, wait=wait, logger=c.logger,
            holder=slot_holder(c),
        ) as name:  # fmt: skip
            yield name

    def level_with_remote(self, c: CampaignRun, last: int | None) -> int | None:
        """The campaign's last committed round once this clone is level with the remote
        (another clone may have committed rounds meanwhile)."""
        for note in tasks.sync_workspace(c.workspace):
            c.logger.info("%s", note)
        now = c.workspace.last_round(c.name)
        _adopt_recorded_parent(c)
        if now != last and now is not None:
            c.workspace.check_consistency(c.name)
            c.logger.info(
                "campaign %s: round %d is the last one committed on the remote", c.name, now
            )
        return now

    def claimed(self, c: CampaignRun, commit: RoundCommit, run_id: str | None) -> bool:
        """Push a committed round to the remote; False when another clone's push of the same
        round came first, in which case this clone's round is dropped for the winner's."""
        r = commit.round
        lost = tasks.claim_round(c.workspace, commit, r)
        if lost is None:
            return True
        c.logger.warning("%s", lost)
        notes = tasks.discard_lost_round(c.workspace, c.tracker, commit, run_id, lost, r)
        for note in notes:
            c.logger.warning("%s", note)
        tasks.clear_handoff(c.handoff, r)
        _adopt_recorded_parent(c)
        return False


def _adopt_recorded_parent(c: CampaignRun) -> None:
    """Once another clone's round 0 is the campaign's, its parent run is the parent of all."""
    recorded = recorded_campaign_run(c.workspace, c.name)
    if recorded and recorded != c.parent_run_id:
        c.parent_run_id = tasks.adopt_campaign_run(c.tracker, c.parent_run_id, recorded)


Sync = LocalWorkspace | SharedWorkspace

# ------------------------------------------------------------------ the choice


@dataclasses.dataclass(frozen=True)
class Modes:
    labels: Labeling
    scoring: ScoringHere | ScoringInShards
    sync: Sync


def choose_modes(config: Config, *, shared: bool) -> Modes:
    """The run's modes. `shared`: the workspace has a git remote."""
    return Modes(
        labels=LABELING[config.oracle.kind](),
        scoring=scoring_mode(config),
        sync=SharedWorkspace() if shared else LocalWorkspace(),
    )
