"""The file hand-off to people who label: a pending batch written to data/<campaign>/to-label/,
their labels imported and checked against it, and the `file` oracle that reads them back.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from baldflow.oracle import LabelsPendingError, OracleError
from baldflow.workspace.repo import TO_LABEL_DIR

SHEET_FIELDS = ["sample_id", "item", "label"]
LABELS_FIELDS = ["sample_id", "label", "labeled_by", "imported_at", "source"]
# How many offending rows an error message lists before it summarises the rest.
_SHOWN = 20


class LabelImportError(ValueError):
    """A label file does not fit the pending batch; the message lists the offending rows."""

    def __init__(self, path: str | Path, problems: Sequence[str]):
        self.problems = list(problems)
        shown = self.problems[:_SHOWN]
        more = len(self.problems) - len(shown)
        lines = [f"{path}: {len(self.problems)} problem(s), nothing was imported:"]
        lines += [f"  {p}" for p in shown]
        if more:
            lines.append(f"  ... and {more} more")
        super().__init__("\n".join(lines))


class NoPendingBatchError(LookupError):
    """A label import was asked for but no batch is waiting for labels."""


def utc_now() -> str:
    return (
        dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


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


@dataclasses.dataclass(frozen=True)
class ImportResult:
    round: int
    added: int
    labeled: int
    batch_size: int

    @property
    def complete(self) -> bool:
        return self.labeled == self.batch_size


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
        data = json.loads(found[0].read_text())
        return PendingRound(**data)

    def write(self, pending: PendingRound, *, images: Any = None) -> Path:
        """Write the sheet people fill in, a contact sheet for images, then the pending state.

        The pending state goes last: a batch only counts as handed off once all of it exists.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        # Hand-off files are working files, not audited history: keep git (and so the round
        # recovery, which discards untracked files) away from them.
        (self.dir / ".gitignore").write_text("*\n")
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(SHEET_FIELDS)
        for sid, item in zip(pending.sample_ids, pending.items, strict=True):
            writer.writerow([sid, item, ""])
        _atomic_write(self.sheet_path(pending.round), buffer.getvalue())
        if images is not None:
            from baldflow.thumbnails import contact_sheet

            contact_sheet(
                images, pending.sample_ids, self.contact_sheet_path(pending.round), columns=10
            )
        _atomic_write(
            self.pending_path(pending.round), json.dumps(dataclasses.asdict(pending), indent=1)
        )
        return self.sheet_path(pending.round)

    def imported(self, round_index: int) -> dict[str, dict[str, str]]:
        """The labels imported so far for a round, by sample id."""
        path = self.labels_path(round_index)
        if not path.exists():
            return {}
        with path.open(newline="") as handle:
            return {r["sample_id"]: r for r in csv.DictReader(handle)}

    def is_complete(self, pending: PendingRound) -> bool:
        return set(pending.sample_ids) <= set(self.imported(pending.round))

    def clear(self, round_index: int) -> None:
        """Remove a round's hand-off files once the round is committed."""
        prefix = f"round-{round_index:04d}"
        for path in self.dir.glob(prefix + ".*"):
            path.unlink()

    # ------------------------------------------------------------------ import
    def import_labels(
        self, path: str | Path, *, partial: bool = False, labeled_by: str
    ) -> ImportResult:
        """Check a label file against the pending batch; store its labels only if all is well.

        Without `partial` the file (with earlier imports) must label the whole batch, and an
        empty label is an error; with `partial`, rows with an empty label are skipped.
        """
        path = Path(path)
        pending = self.pending()
        if pending is None:
            raise NoPendingBatchError(
                f"campaign {self.campaign!r} has no batch waiting for labels (in {self.dir})"
            )
        if not path.is_file():
            raise FileNotFoundError(f"label file {path} does not exist")
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            missing_columns = [c for c in ("sample_id", "label") if c not in columns]
            if missing_columns:
                raise LabelImportError(
                    path,
                    [f"missing column(s) {', '.join(missing_columns)} (header: {columns})"],
                )
            records = list(reader)
        batch = set(pending.sample_ids)
        before = self.imported(pending.round)
        classes = pending.class_names
        problems: list[str] = []
        accepted: dict[str, int] = {}
        for line, record in enumerate(records, start=2):
            sid = (record.get("sample_id") or "").strip()
            raw = (record.get("label") or "").strip()
            if not sid:
                problems.append(f"line {line}: empty sample_id")
                continue
            if sid not in batch:
                problems.append(
                    f"line {line}: sample_id {sid!r} is not in the pending batch "
                    f"(round {pending.round})"
                )
                continue
            if sid in accepted:
                problems.append(f"line {line}: sample_id {sid!r} appears more than once")
                continue
            if not raw:
                if not partial:
                    problems.append(f"line {line}: sample_id {sid!r} has an empty label")
                continue
            label = class_index(raw, classes)
            if label is None:
                problems.append(
                    f"line {line}: sample_id {sid!r} has label {raw!r}, not one of the classes "
                    f"{', '.join(classes)} (or their indices 0..{len(classes) - 1})"
                )
                continue
            if sid in before and int(before[sid]["label"]) != label:
                problems.append(
                    f"line {line}: sample_id {sid!r} was already imported with label "
                    f"{before[sid]['label']} ({before[sid]['source']}), this file says {label}"
                )
                continue
            accepted[sid] = label
        if not partial:
            missing = [
                sid for sid in pending.sample_ids if sid not in accepted and sid not in before
            ]
            for sid in missing:
                problems.append(
                    f"sample_id {sid!r} of the batch has no label (use --partial to import "
                    "part of a batch)"
                )
        if problems:
            raise LabelImportError(path, problems)
        now = utc_now()
        merged = dict(before)
        added = 0
        for sid, label in accepted.items():
            if sid in merged:
                continue
            merged[sid] = {
                "sample_id": sid,
                "label": str(label),
                "labeled_by": labeled_by,
                "imported_at": now,
                "source": path.name,
            }
            added += 1
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=LABELS_FIELDS, lineterminator="\n")
        writer.writeheader()
        # Batch order, so the file reads like the sheet that was handed out.
        for sid in pending.sample_ids:
            if sid in merged:
                writer.writerow({k: merged[sid][k] for k in LABELS_FIELDS})
        _atomic_write(self.labels_path(pending.round), buffer.getvalue())
        return ImportResult(pending.round, added, len(merged), len(pending.sample_ids))


def class_index(raw: str, class_names: Sequence[str]) -> int | None:
    """A label as written by a person: a class name, or a class index."""
    if raw in class_names:
        return list(class_names).index(raw)
    if raw.isdigit() and int(raw) < len(class_names):
        return int(raw)
    return None


def describe_item(source: str, root: str | None, sample_id: str) -> str:
    """Where a person finds the item to label, for the sheet's `item` column."""
    if source == "folder" and root:
        # Folder ids are paths relative to root; a repeated copy "<id>~r<c>" names its origin.
        from baldflow.data.repeat import REPEAT_SEPARATOR

        origin = sample_id.split(REPEAT_SEPARATOR, 1)[0]
        return str(Path(root) / origin)
    if root:
        return f"{source} at {root}, sample {sample_id}"
    return f"{source} sample {sample_id}"


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
