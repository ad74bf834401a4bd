"""The audit ledger (one append-only CSV row per acquired sample) and the labeled-set table.

Plain csv, no pandas: `baldflow history` reads these and should answer fast.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from baldflow.config import strategy_spelling


class LedgerError(RuntimeError):
    """The ledger or labeled set is inconsistent (a duplicate sample, a round out of order)."""


@dataclass(frozen=True)
class LedgerRow:
    """Why one sample was labeled: when, by which round and model, with what score."""

    campaign: str
    round: int
    sample_id: str
    label: int
    strategy: str
    # Position of the sample in the acquired batch (0 = picked first).
    rank: int
    score: float | None
    # The probability that the selection's *first* draw picks this sample (the normalised
    # weight), not the probability of being in the batch: named so no auditor reads it as that.
    first_pick_probability: float | None
    selection_key: float | None
    seed: int
    acquired_at: str
    mlflow_run_id: str
    prefect_flow_run_id: str
    # md5 of the campaign's labeled.csv after this round: the hash DVC records for it.
    labeled_set_md5: str
    # Who or what gave the label ("simulated oracle", "alice via round-0003.csv"); empty in
    # ledgers written before the column existed.
    labeled_by: str = ""


LEDGER_FIELDS = [f.name for f in fields(LedgerRow)]
# Columns renamed since: ledgers written before keep (and are appended to in) the old name.
RENAMED_COLUMNS = {"selection_probability": "first_pick_probability"}
_OLD_NAMES = {new: old for old, new in RENAMED_COLUMNS.items()}
# Ledgers written before the first-pick column was renamed (V2), and before `labeled_by`
# existed (V1): still read, and appended to in their own columns.
LEDGER_FIELDS_V2 = [_OLD_NAMES.get(name, name) for name in LEDGER_FIELDS]
LEDGER_FIELDS_V1 = LEDGER_FIELDS_V2[:-1]
LABELED_FIELDS = ["sample_id", "label", "round"]
# The ledger fields that say when and why a sample was acquired: the columns of every
# human-facing ledger table (the CLI's history, the HTML report), which add their own context.
ACQUISITION_COLUMNS = [
    "round",
    "rank",
    "sample_id",
    "label",
    "strategy",
    "score",
    "first_pick_probability",
    "selection_key",
    "acquired_at",
]


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _optional_float(text: str) -> float | None:
    return float(text) if text != "" else None


def _row_from_csv(record: dict[str, str]) -> LedgerRow:
    return LedgerRow(
        campaign=record["campaign"],
        round=int(record["round"]),
        sample_id=record["sample_id"],
        label=int(record["label"]),
        # Rows written before strategy names settled on hyphens read with today's spelling; an
        # import string (package.module:attr) is a Python path and reads as written.
        strategy=strategy_spelling(record["strategy"]),
        rank=int(record["rank"]),
        score=_optional_float(record["score"]),
        first_pick_probability=_optional_float(
            record["first_pick_probability"]
            if "first_pick_probability" in record
            else record["selection_probability"]
        ),
        selection_key=_optional_float(record["selection_key"]),
        seed=int(record["seed"]),
        acquired_at=record["acquired_at"],
        mlflow_run_id=record["mlflow_run_id"],
        prefect_flow_run_id=record["prefect_flow_run_id"],
        labeled_set_md5=record["labeled_set_md5"],
        labeled_by=record.get("labeled_by") or "",
    )


def read_ledger(path: str | Path) -> list[LedgerRow]:
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        known = (LEDGER_FIELDS, LEDGER_FIELDS_V2, LEDGER_FIELDS_V1)
        if reader.fieldnames is not None and reader.fieldnames not in known:
            raise LedgerError(f"{path} has columns {reader.fieldnames}, expected {LEDGER_FIELDS}")
        return [_row_from_csv(record) for record in reader]


# Ledger columns people may open in a spreadsheet that hold text from outside baldflow's
# control (ids, labelers' names); the others are numbers, hashes, run ids and timestamps.
_TEXT_FIELDS = frozenset(f.name for f in fields(LedgerRow) if f.type in ("str", str))


def ledger_text(
    rows: Iterable[LedgerRow],
    *,
    header: bool,
    columns: Sequence[str] = LEDGER_FIELDS,
    for_people: bool = False,
) -> str:
    """The rows as CSV. The ledger file itself holds exact data; `for_people` output (e.g.
    `baldflow history --format csv`) has formula-like text cells neutralised with a leading
    apostrophe. Number columns are never touched: a score of -0.5 stays a number."""
    from baldflow.common import spreadsheet_safe

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(columns)
    for row in rows:
        record = asdict(row)
        cells = [_cell(record[RENAMED_COLUMNS.get(name, name)]) for name in columns]
        if for_people:
            cells = [
                spreadsheet_safe(cell) if name in _TEXT_FIELDS else cell
                for name, cell in zip(columns, cells, strict=True)
            ]
        writer.writerow(cells)
    return buffer.getvalue()


def _header(path: Path) -> list[str] | None:
    with path.open(newline="", encoding="utf-8") as handle:
        return next(csv.reader(handle), None)


def append_ledger(path: str | Path, rows: Sequence[LedgerRow]) -> None:
    """Append rows; the file only ever grows, so earlier rounds' rows are never rewritten."""
    path = Path(path)
    exists = path.exists() and path.stat().st_size > 0
    # An old ledger keeps its columns: rewriting its header would rewrite its history.
    columns = LEDGER_FIELDS
    if exists:
        header = _header(path)
        columns = header if header in (LEDGER_FIELDS_V2, LEDGER_FIELDS_V1) else LEDGER_FIELDS
    with path.open("a", newline="", encoding="utf-8") as handle:
        handle.write(ledger_text(rows, header=not exists, columns=columns))
        handle.flush()


def labeled_rows_from_ledger(
    rows: Iterable[LedgerRow], *, up_to_round: int | None = None
) -> list[tuple[str, int, int]]:
    """The labeled set implied by the ledger (optionally as it was after a given round)."""
    out: list[tuple[str, int, int]] = []
    seen: set[str] = set()
    for row in rows:
        if up_to_round is not None and row.round > up_to_round:
            continue
        if row.sample_id in seen:
            raise LedgerError(
                f"sample_id {row.sample_id} is in the ledger twice (round {row.round})"
            )
        seen.add(row.sample_id)
        out.append((row.sample_id, row.label, row.round))
    return out


def labeled_text(rows: Iterable[tuple[str, int, int]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(LABELED_FIELDS)
    for sample_id, label, round_index in rows:
        writer.writerow([sample_id, int(label), int(round_index)])
    return buffer.getvalue()


def parse_labeled(text: str) -> list[tuple[str, int, int]]:
    reader = csv.DictReader(io.StringIO(text))
    return [(r["sample_id"], int(r["label"]), int(r["round"])) for r in reader]


def read_labeled(path: str | Path) -> list[tuple[str, int, int]]:
    path = Path(path)
    if not path.exists():
        return []
    return parse_labeled(path.read_text(encoding="utf-8"))


def md5_of_text(text: str) -> str:
    # DVC 3 hashes a file's raw bytes with md5, so this is the hash its .dvc file will record.
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def md5_of_file(path: str | Path) -> str:
    digest = hashlib.md5()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
