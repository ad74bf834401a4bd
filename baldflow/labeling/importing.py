"""Import of people's labels for a pending batch: every row checked, nothing partial stored.

A label file is the sheet baldflow handed out, as whatever spreadsheet or script saved it:
- UTF-8 with or without a byte-order mark, LF, CRLF or CR line ends; columns in any order,
  header names trimmed and matched ignoring case; extra columns (the sheet's `item`, notes)
  are ignored; rows whose cells are all empty (spreadsheets append them) are skipped.
- Cells are trimmed, and a leading apostrophe (the sheet's mark on formula-like text, which
  spreadsheets keep or drop) is taken off sample ids and labels. An id may also come back in
  another Unicode normalisation (NFC/NFD) than the batch's, as long as it names one sample.
- A label is a class name or a class index, mixed freely within a file. A name matches
  exactly, else ignoring case and compatibility forms (NFKC: fullwidth letters) when that
  names one class. An index is written in decimal digits of any script: ASCII '3',
  Arabic-Indic '٣' and fullwidth '３' all mean 3 (each Unicode decimal digit has one value);
  digit-like characters that are no decimal digits (superscript '³', circled '③') are refused.
  A name wins over an index: when the classes are named by numbers that are not their own
  positions (classes '1', '2', '3'), a number is read as a name only, since '1' as an index
  would be class '2'.
Refused with every offending line listed, storing nothing: a file that is not UTF-8, an empty
file, a header without rows, a missing or repeated sample_id/label column, ids outside the
batch, a sample listed twice (even with the same label: copy-paste slips look like that), a
label that is no class, a label that contradicts an earlier import, and (without `partial`)
an incomplete batch.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import io
import unicodedata
from collections.abc import Sequence
from pathlib import Path

from baldflow.common import from_spreadsheet, printable, short_repr, utc_now
from baldflow.faults import fault_point
from baldflow.labeling.handoff import LABELS_FIELDS, HandOff

# How many offending rows an error message lists before it summarises the rest.
_SHOWN = 20
# Longer digit strings are no index of any class (and int() refuses over 4,300 digits).
_MAX_INDEX_DIGITS = 9


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
    handoff: HandOff, path: str | Path, *, partial: bool = False, labeled_by: str
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
    # Both end up in the ledger's labeled_by column and on people's terminals.
    for what, value in (("labeled_by", labeled_by), ("the file name", path.name)):
        if not value or printable(value) != value:
            raise LabelImportError(
                path,
                [f"{what} {short_repr(value)} is empty or holds control or invisible characters"],
            )
    records = _read_rows(path)
    ids = _BatchIds(pending.sample_ids)
    before = handoff.imported(pending.round)
    classes = list(pending.class_names)
    problems: list[str] = []
    accepted: dict[str, int] = {}
    seen: dict[str, int] = {}
    for line, cell_id, cell_label in records:
        if not cell_id:
            problems.append(f"line {line}: empty sample_id")
            continue
        sid = ids.resolve(cell_id)
        if sid is None:
            problems.append(
                f"line {line}: sample_id {short_repr(cell_id)} is not in the pending batch "
                f"(round {pending.round})"
            )
            continue
        if sid in seen:
            problems.append(
                f"line {line}: sample_id {short_repr(sid)} appears more than once (first on "
                f"line {seen[sid]})"
            )
            continue
        seen[sid] = line
        if not cell_label:
            if not partial:
                problems.append(f"line {line}: sample_id {short_repr(sid)} has an empty label")
            continue
        label = class_index(cell_label, classes)
        if label is None:
            label = class_index(from_spreadsheet(cell_label), classes)
        if label is None:
            problems.append(
                f"line {line}: sample_id {short_repr(sid)} has {_refusal(cell_label, classes)}"
            )
            continue
        if sid in before and int(before[sid]["label"]) != label:
            problems.append(
                f"line {line}: sample_id {short_repr(sid)} was already imported with label "
                f"{before[sid]['label']} ({before[sid]['source']}), this file says {label}"
            )
            continue
        accepted[sid] = label
    if not partial:
        # Ids whose row was refused above are reported once, on their line.
        missing = [sid for sid in pending.sample_ids if sid not in seen and sid not in before]
        for sid in missing:
            problems.append(
                f"sample_id {short_repr(sid)} of the batch has no label (use --partial to "
                "import part of a batch)"
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
    fault_point("import:labels-written", pending.round)
    return ImportResult(pending.round, added, len(merged), len(pending.sample_ids))


def _decode(path: Path) -> str:
    """The file's text: UTF-8, with or without a byte-order mark; anything else is refused."""
    data = path.read_bytes()
    for bom, name in (
        (codecs.BOM_UTF32_LE, "UTF-32"),
        (codecs.BOM_UTF32_BE, "UTF-32"),
        (codecs.BOM_UTF16_LE, "UTF-16"),
        (codecs.BOM_UTF16_BE, "UTF-16"),
    ):
        if data.startswith(bom):
            raise LabelImportError(
                path,
                [
                    f"the file is {name} (it starts with a {name} byte-order mark); save it "
                    "as 'CSV UTF-8'"
                ],
            )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise LabelImportError(
            path,
            [
                f"the file is not UTF-8: byte {data[error.start]:#04x} at offset {error.start} "
                f"(line {line}): {error.reason}; save it as 'CSV UTF-8' (a spreadsheet's "
                "plain 'CSV' may use another encoding, e.g. Windows-1252)"
            ],
        ) from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise LabelImportError(
            path,
            [
                f"the file holds NUL bytes (line {line}): it is not a text CSV file (UTF-16 "
                "without a byte-order mark?); save it as 'CSV UTF-8'"
            ],
        )
    return text


def _read_rows(path: Path) -> list[tuple[int, str, str]]:
    """(line, sample_id cell, label cell) of every row that is not blank, cells trimmed."""
    text = _decode(path)
    if not text.strip():
        raise LabelImportError(
            path, ["the file is empty: expected a header row with sample_id and label columns"]
        )
    # strict: a stray quote (`"a"b`, an unterminated `"a,b`) is an error, not a silently
    # different cell.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[tuple[int, list[str]]] = []
    try:
        for cells in reader:
            rows.append((reader.line_num, cells))
    except csv.Error as error:
        start = rows[-1][0] + 1 if rows else 1
        raise LabelImportError(
            path, [f"line {start}: not readable as CSV (a stray or unclosed quote?): {error}"]
        ) from None
    header_line, header = next((r for r in rows if any(c.strip() for c in r[1])), rows[0])
    columns = [c.strip().casefold() for c in header]
    problems = []
    for name in ("sample_id", "label"):
        count = columns.count(name)
        if count != 1:
            state = "missing" if count == 0 else f"present {count} times"
            problems.append(
                f"line {header_line}: column {name!r} is {state} (header: "
                f"{', '.join(short_repr(c, 40) for c in header)})"
            )
    if problems:
        raise LabelImportError(path, problems)
    id_column, label_column = columns.index("sample_id"), columns.index("label")
    out = []
    for line, cells in rows:
        if line <= header_line or not any(c.strip() for c in cells):
            continue
        cells = [c.strip() for c in cells] + [""] * (len(header) - len(cells))
        out.append((line, cells[id_column], cells[label_column]))
    if not out:
        raise LabelImportError(path, [f"the file has a header (line {header_line}) but no rows"])
    return out


class _BatchIds:
    """The batch's ids as people may write them back: exactly, or in another Unicode
    normalisation (a spreadsheet may store 'é' either way) when that names one sample."""

    def __init__(self, sample_ids: Sequence[str]):
        self.exact = set(sample_ids)
        self.normalised: dict[str, list[str]] = {}
        for sid in sample_ids:
            self.normalised.setdefault(unicodedata.normalize("NFC", sid), []).append(sid)

    def resolve(self, cell: str) -> str | None:
        # As written first: ids of batches handed out before ids were checked at load may
        # start with an apostrophe themselves.
        for text in dict.fromkeys((cell, from_spreadsheet(cell).strip())):
            if text in self.exact:
                return text
            found = self.normalised.get(unicodedata.normalize("NFC", text), [])
            if len(found) == 1:
                return found[0]
        return None


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def _decimal(text: str) -> int | None:
    """The value of a string of Unicode decimal digits (any script), else None."""
    if not text.isdecimal() or len(text) > _MAX_INDEX_DIGITS:
        return None
    return int(text)


def _indices_allowed(class_names: Sequence[str]) -> bool:
    """False when a class is named by a number other than its position: a number in a label
    is then read as a name only, never as an index."""
    return all(_decimal(n) in (None, i) for i, n in enumerate(class_names))


def class_index(raw: str, class_names: Sequence[str]) -> int | None:
    """A label as written by a person: a class name (exact, else ignoring case and
    compatibility forms when that names one class), or a class index in decimal digits of any
    script; a name wins over an index (see the module docstring)."""
    names = list(class_names)
    if raw in names:
        return names.index(raw)
    folded = [i for i, n in enumerate(names) if _fold(n) == _fold(raw)]
    if len(folded) == 1:
        return folded[0]
    value = _decimal(raw)
    if value is None:
        return None
    # '٣' or '03' for a class named '3'.
    if str(value) in names:
        return names.index(str(value))
    if _indices_allowed(names) and value < len(names):
        return value
    return None


def _refusal(raw: str, class_names: Sequence[str]) -> str:
    """Why a label names no class, for the error line."""
    names = list(class_names)
    listing = ", ".join(n if len(n) <= 40 else short_repr(n, 40) for n in names)
    folded = [n for n in names if _fold(n) == _fold(raw)]
    if len(folded) > 1:
        return (
            f"label {short_repr(raw)}, which matches the classes {', '.join(map(repr, folded))} "
            "ignoring case: write the class name exactly"
        )
    value = _decimal(raw)
    if not _indices_allowed(names):
        if value is not None and value < len(names):
            return (
                f"label {short_repr(raw)}, not one of the classes {listing}; indices are not "
                "accepted because the classes are named by numbers that are not their "
                "positions: write the class name"
            )
        return f"label {short_repr(raw)}, not one of the classes {listing}"
    return (
        f"label {short_repr(raw)}, not one of the classes {listing} (or their indices "
        f"0..{len(names) - 1})"
    )
