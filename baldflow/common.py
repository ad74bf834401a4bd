"""Small helpers every part of baldflow shares: atomic file writes, UTC timestamps, cell text."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file so that readers (and a crash) see either the old or the new content.

    The temporary file sits beside the target (same filesystem, so the rename is atomic) and
    is flushed to disk first: a power cut must not leave a renamed but empty file.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def utc_now() -> str:
    """Now as ISO 8601 UTC with milliseconds, e.g. 2026-01-02T03:04:05.678Z."""
    now = dt.datetime.now(dt.timezone.utc)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_number(value: Any, *, digits: int = 6, missing: str = "") -> str:
    """A value as a short table cell: floats with `digits` significant digits, None as `missing`."""
    if value is None or value == "":
        return missing
    if isinstance(value, float):
        if value != value:  # NaN
            return missing
        return f"{value:.{digits}g}"
    return str(value)


# ---------------------------------------------------------------------------------------------
# Untrusted text: sample ids, class names and labelers' names come from users' files.

# Format characters (Unicode Cf) that text needs and that do not hide or reorder anything:
# zero-width (non-)joiners shape Persian and Indic words and join emoji sequences, and tag
# characters spell subdivision flags (e.g. the Scottish flag).
_ALLOWED_FORMAT = frozenset({0x200C, 0x200D, *range(0xE0020, 0xE0080)})
# Every other character of these Unicode categories is refused in ids and names.
_REFUSED_CATEGORIES = {
    "Cc": "control character",
    "Cf": "invisible format character",
    "Cs": "lone surrogate",
    "Zl": "line separator",
    "Zp": "paragraph separator",
}
# The mark that neutralises a formula-like cell in the sheets baldflow writes for people.
SHEET_QUOTE = "'"


def _refused_kind(char: str) -> str | None:
    import unicodedata

    kind = _REFUSED_CATEGORIES.get(unicodedata.category(char))
    if kind is None or ord(char) in _ALLOWED_FORMAT:
        return None
    return kind


def _char_name(char: str) -> str:
    import unicodedata

    return f"U+{ord(char):04X}" + (
        f" {unicodedata.name(char)}" if unicodedata.name(char, "") else ""
    )


def text_problem(text: str) -> str | None:
    """Why `text` cannot be a sample id or class name, or None when it can.

    Refused, per character class:
    - control characters (Unicode Cc: NUL, tab, newline, CR, ESC, DEL, C1 controls): they end
      rows in CSV tools and logs, drive terminals (colours, cursor moves) and truncate C strings;
    - line and paragraph separators (U+2028, U+2029): line breaks to many editors and viewers;
    - invisible format characters (Unicode Cf: bidi overrides and isolates, LRM/RLM, zero-width
      space, soft hyphen, BOM, ...) except zero-width (non-)joiners and emoji tag characters:
      they hide or reorder what a person sees, so two different ids would look alike
      ("Trojan Source");
    - lone surrogates: they have no UTF-8 form, so no file could hold the id;
    - empty text, and leading or trailing whitespace: label import trims cells;
    - a leading apostrophe: the mark that neutralises formula-like cells in baldflow's sheets,
      which a spreadsheet may keep or drop, so such an id could not be told apart on import.
    Everything else (markup brackets, `$`, commas, quotes, right-to-left scripts, combining
    marks, emoji, very long text) is accepted: every output escapes it.
    """
    if not isinstance(text, str):
        return f"is a {type(text).__name__}, not text"
    if text == "":
        return "is empty"
    # Plain ASCII ids (row numbers, file names) skip the per-character look-up: MNIST has 60,000.
    clean = text.isascii() and text.isprintable()
    for position, char in enumerate("" if clean else text):
        kind = _refused_kind(char)
        if kind is not None:
            return f"holds the {kind} {_char_name(char)} at position {position}"
    if text != text.strip():
        return "has leading or trailing whitespace"
    if text.startswith(SHEET_QUOTE):
        return "starts with an apostrophe (the mark of a neutralised spreadsheet cell)"
    return None


def short_repr(text: Any, limit: int = 80) -> str:
    """repr() of a possibly huge value for an error message, cut in the middle (a text's
    length is added)."""
    shown = repr(text)
    if len(shown) <= limit:
        return shown
    half = (limit - 5) // 2
    cut = f"{shown[:half]}...{shown[-half:]}"
    return f"{cut} ({len(text)} characters)" if isinstance(text, str) else cut


def printable(text: str) -> str:
    """Text for a terminal: characters that `text_problem` refuses become visible escapes
    (a newline shows as \\n), so untrusted text cannot move the cursor or recolour the screen."""
    if not any(_refused_kind(char) for char in text):
        return text
    out = []
    for char in text:
        if _refused_kind(char) is None:
            out.append(char)
        else:
            out.append(repr(char)[1:-1] if ord(char) < 0x80 else f"\\u{ord(char):04x}")
    return "".join(out)


# Cells starting with these are formulas (or become them) in Excel, LibreOffice and Google Sheets:
# OWASP's list for CSV injection.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(text: str) -> str:
    """A text cell of a CSV meant for people, with formula-like text neutralised (OWASP).

    A leading apostrophe makes spreadsheets show the cell as text instead of evaluating it
    (`=HYPERLINK(...)`, `@SUM(...)`, `-2+3`). Only apply it to text columns (ids, labels,
    names): numbers written by baldflow, such as a score of -0.5, stay numbers.
    """
    if text.startswith(FORMULA_TRIGGERS):
        return SHEET_QUOTE + text
    return text


def from_spreadsheet(text: str) -> str:
    """A cell read back from a sheet people edited: without the neutralising apostrophe, which
    spreadsheets keep or drop when they save. Ids and class names never start with one."""
    return text[1:] if text.startswith(SHEET_QUOTE) else text


# Bytes read at a time when a file is hashed: the whole file is never in memory.
HASH_BLOCK_BYTES = 4 << 20


def _stream_into(path: str | Path, *digests: Any) -> int:
    """Feed a file's bytes, HASH_BLOCK_BYTES at a time, to each hash object; its size."""
    size = 0
    with open(path, "rb") as handle:
        while block := handle.read(HASH_BLOCK_BYTES):
            for digest in digests:
                digest.update(block)
            size += len(block)
    return size


def file_sha256(path: str | Path) -> str:
    """sha256 hex of a file's bytes, streamed in HASH_BLOCK_BYTES pieces."""
    digest = hashlib.sha256()
    _stream_into(path, digest)
    return digest.hexdigest()


def file_entry(path: str | Path) -> dict[str, Any]:
    """A manifest entry of a local file: its size, sha256 and MD5, from one streamed read.

    Why the MD5 too: an object store's ETag of a single-part upload is the object's MD5, and
    that is all a manifest of a pool in a bucket records of it (nothing read). A local pool's
    entry with both hashes can then be matched against its copy in a bucket, and the copy
    against it, without reading either again."""
    sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    size = _stream_into(path, sha256, md5)
    return {"bytes": size, "sha256": sha256.hexdigest(), "md5": md5.hexdigest()}
