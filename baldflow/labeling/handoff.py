"""The file hand-off to people who label: a pending batch written to data/<campaign>/to-label/,
the labels imported for it, and the `file` oracle that reads them back.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from baldflow.common import atomic_write_text
from baldflow.labeling.oracles import LabelsPendingError, OracleError
from baldflow.workspace.repo import TO_LABEL_DIR, WorkspaceError

SHEET_FIELDS = ["sample_id", "item", "label"]
LABELS_FIELDS = ["sample_id", "label", "labeled_by", "imported_at", "source"]


@dataclasses.dataclass
class PendingRound:
    """A batch waiting for labels, with what the pipeline needs to finish its round later.

    `state` is opaque here: the flow stores the round's scores, metrics and run ids in it.
    """

    campaign: str
    round: int
    sample_ids: list[str]
    items: list[str]
    class_names: list[str]
    # md5 of the labeled set the batch was chosen from; finishing checks it is still current.
    base_md5: str
    created_at: str
    state: dict[str, Any] = dataclasses.field(default_factory=dict)
    # The campaign's parameters when the batch was chosen: the round finishes with these.
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    # The round model's mean predictive distribution per sample (class probabilities), shown
    # to labelers as its guess where the labeling tool can (Label Studio); empty in round 0.
    predictions: dict[str, list[float]] = dataclasses.field(default_factory=dict)


class WaitingForLabels(Exception):  # noqa: N818 (a pause, not an error)
    """The round's batch is with people; the campaign stops until they answer."""

    def __init__(
        self, pending: PendingRound, sheet: str | Path, labeled: int, *, studio: str | None = None
    ):
        self.pending = pending
        self.sheet = str(sheet)
        # Where people label when they use Label Studio (the project's address), else None.
        self.studio = studio
        how = (
            f"label its tasks in Label Studio ({studio}); `baldflow label pull` or the next "
            "cycle picks the labels up"
            if studio
            else f"fill in {sheet} and run `baldflow label import`"
        )
        super().__init__(
            f"round {pending.round} of {pending.campaign} is waiting for labels: "
            f"{labeled} of {len(pending.sample_ids)} labeled; {how}"
        )


class HandOff:
    """The to-label folder of one campaign: at most one pending batch at a time."""

    def __init__(self, campaign_dir: str | Path, campaign: str):
        self.campaign = campaign
        self.dir = Path(campaign_dir) / TO_LABEL_DIR

    # ------------------------------------------------------------------ paths
    def sheet_path(self, round_index: int) -> Path:
        return self.dir / f"round-{round_index:04d}.csv"

    def contact_sheet_path(self, round_index: int) -> Path:
        return self.dir / f"round-{round_index:04d}.png"

    def pending_path(self, round_index: int) -> Path:
        return self.dir / f"round-{round_index:04d}.pending.json"

    def labels_path(self, round_index: int) -> Path:
        return self.dir / f"round-{round_index:04d}.labels.csv"

    def model_path(self, round_index: int) -> Path:
        return self.dir / f"round-{round_index:04d}.model.pt"

    def ensure_dir(self) -> None:
        """The folder, git-ignored: hand-off files are working files, not audited history,
        so git (and the round recovery, which discards untracked files) stays away."""
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / ".gitignore").write_text("*\n")

    # ------------------------------------------------------------------ state
    def pending(self) -> PendingRound | None:
        if not self.dir.is_dir():
            return None
        found = sorted(self.dir.glob("round-*.pending.json"))
        if not found:
            return None
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise OracleError(f"{self.dir} holds more than one pending batch ({names})")
        data = json.loads(found[0].read_text(encoding="utf-8"))
        return PendingRound(**data)

    def write(self, pending: PendingRound, *, images: Any = None) -> Path:
        """Write the sheet people fill in, a contact sheet for images, then the pending state.

        The pending state goes last: a batch only counts as handed off once all of it exists.
        The sheet is opened in spreadsheets, so its text cells are neutralised against formula
        injection (an id such as `=HYPERLINK(...)` gets a leading apostrophe); the label
        import accepts ids with or without it.
        """
        from baldflow.common import spreadsheet_safe

        self.ensure_dir()
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(SHEET_FIELDS)
        for sid, item in zip(pending.sample_ids, pending.items, strict=True):
            writer.writerow([spreadsheet_safe(sid), spreadsheet_safe(item), ""])
        atomic_write_text(self.sheet_path(pending.round), buffer.getvalue())
        if images is not None:
            from baldflow.figures.thumbnails import contact_sheet

            contact_sheet(
                images, pending.sample_ids, self.contact_sheet_path(pending.round), columns=10
            )
        atomic_write_text(
            self.pending_path(pending.round), json.dumps(dataclasses.asdict(pending), indent=1)
        )
        return self.sheet_path(pending.round)

    def imported(self, round_index: int) -> dict[str, dict[str, str]]:
        """The labels imported so far for a round, by sample id."""
        path = self.labels_path(round_index)
        if not path.exists():
            return {}
        with path.open(newline="", encoding="utf-8") as handle:
            return {r["sample_id"]: r for r in csv.DictReader(handle)}

    def is_complete(self, pending: PendingRound) -> bool:
        return set(pending.sample_ids) <= set(self.imported(pending.round))

    def write_imported(self, round_index: int, text: str) -> None:
        """Store the labels imported for a round (baldflow.labeling.importing checks them)."""
        atomic_write_text(self.labels_path(round_index), text)

    def clear(self, round_index: int) -> None:
        """Remove a round's hand-off files once the round is committed.

        The pending state goes first: once it is gone the batch no longer counts as handed
        off, and whatever a kill leaves after that is a recognisable leftover.
        """
        prefix = f"round-{round_index:04d}"
        self.pending_path(round_index).unlink(missing_ok=True)
        for path in self.dir.glob(prefix + ".*"):
            path.unlink(missing_ok=True)

    def clear_committed(self, last_committed: int | None) -> list[int]:
        """Remove the hand-off files of rounds git has committed; return those rounds.

        Clearing is part of completing a round, but a process killed between the commit and
        the clearing leaves them behind, and a stale pending batch would block the campaign.
        """
        if last_committed is None or not self.dir.is_dir():
            return []
        rounds = set()
        for path in self.dir.glob("round-*"):
            match = re.match(r"round-(\d{4,})\.", path.name)
            if match and int(match.group(1)) <= last_committed:
                rounds.add(int(match.group(1)))
        for round_index in sorted(rounds):
            self.clear(round_index)
        return sorted(rounds)

    def check_pending(
        self,
        pending: PendingRound | None,
        round_index: int,
        labeled_md5: str,
        *,
        studio: str | None = None,
    ) -> PendingRound:
        """The batch that finishes `round_index`: chosen for it, from the current labeled set,
        and fully labeled; raises WaitingForLabels while people are still at it."""
        pending = self.check_batch(pending, round_index, labeled_md5)
        if not self.is_complete(pending):
            labeled = len(set(self.imported(pending.round)) & set(pending.sample_ids))
            raise WaitingForLabels(pending, self.sheet_path(pending.round), labeled, studio=studio)
        return pending

    def check_batch(
        self, pending: PendingRound | None, round_index: int, labeled_md5: str
    ) -> PendingRound:
        """The pending batch, if it was chosen for `round_index` from the current labeled set."""
        if pending is None:
            raise WorkspaceError(
                f"campaign {self.campaign!r}: no pending batch for round {round_index}"
            )
        if pending.round != round_index or pending.base_md5 != labeled_md5:
            raise WorkspaceError(
                f"campaign {self.campaign!r}: the batch in {self.pending_path(pending.round)} "
                f"was chosen for round {pending.round} from another labeled set than the "
                f"workspace's (next round {round_index}); remove it to choose a new batch"
            )
        return pending


def describe_item(source: str, root: str | None, sample_id: str) -> str:
    """Where a person finds the item to label, for the sheet's `item` column: the source
    says (`DataSource.describe_item`; the folder source gives the image's path)."""
    from baldflow.data.registry import data_source
    from baldflow.plugins import PluginError

    try:
        described = data_source(source)
    except PluginError:
        # A plug-in gone from this environment since the batch was chosen: the sheet still
        # needs a line, and the generic one names the sample.
        return f"{source} at {root}, sample {sample_id}" if root else f"{source} sample {sample_id}"
    return described.describe_item(root, sample_id)


@dataclasses.dataclass
class FileOracle:
    """Labels that people gave through the hand-off files; `label` fails until they are in."""

    handoff: HandOff
    kind: str = "file"

    def _labels(self, sample_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        pending = self.handoff.pending()
        if pending is None or set(sample_ids) - set(pending.sample_ids):
            raise OracleError("the file oracle has no pending batch holding these sample ids")
        imported = self.handoff.imported(pending.round)
        missing = [sid for sid in sample_ids if sid not in imported]
        if missing:
            raise LabelsPendingError(
                f"{len(missing)} of {len(sample_ids)} sample(s) of round {pending.round} have no "
                f"label yet (e.g. {missing[0]})"
            )
        return imported

    def label(self, sample_ids: Sequence[str]) -> list[int]:
        imported = self._labels(sample_ids)
        return [int(imported[sid]["label"]) for sid in sample_ids]

    def labeled_by(self, sample_ids: Sequence[str]) -> list[str]:
        imported = self._labels(sample_ids)
        return [
            f"{imported[sid]['labeled_by']} via {imported[sid]['source']}" for sid in sample_ids
        ]


def pending_batches(workspace_root: str | Path) -> list[tuple[HandOff, PendingRound]]:
    """Every batch waiting for labels in a workspace, one per campaign at most."""
    base = Path(workspace_root) / "data"
    found = []
    for directory in sorted(base.glob(f"*/{TO_LABEL_DIR}")):
        handoff = HandOff(directory.parent, directory.parent.name)
        pending = handoff.pending()
        if pending is not None:
            found.append((handoff, pending))
    return found
