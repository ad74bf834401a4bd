"""Import of people's labels for a pending batch: every row checked, nothing partial stored."""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Sequence
from pathlib import Path

from baldflow.common import utc_now
from baldflow.labeling.handoff import LABELS_FIELDS, HandOff

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


@dataclasses.dataclass(frozen=True)
class ImportResult:
    round: int
    added: int
    labeled: int
    batch_size: int

    @property
    def complete(self) -> bool:
        return self.labeled == self.batch_size


def import_labels(
    handoff: HandOff,
    path: str | Path, *, partial: bool = False, labeled_by: str
) -> ImportResult:
    """Check a label file against the pending batch; store its labels only if all is well.

    Without `partial` the file (with earlier imports) must label the whole batch, and an
    empty label is an error; with `partial`, rows with an empty label are skipped.
    """
    path = Path(path)
    pending = handoff.pending()
    if pending is None:
        raise NoPendingBatchError(
            f"campaign {handoff.campaign!r} has no batch waiting for labels (in {handoff.dir})"
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
    before = handoff.imported(pending.round)
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
    handoff.write_imported(pending.round, buffer.getvalue())
    return ImportResult(pending.round, added, len(merged), len(pending.sample_ids))


def class_index(raw: str, class_names: Sequence[str]) -> int | None:
    """A label as written by a person: a class name, or a class index."""
    if raw in class_names:
        return list(class_names).index(raw)
    if raw.isdigit() and int(raw) < len(class_names):
        return int(raw)
    return None
