"""Small helpers every part of baldflow shares: atomic file writes, UTC timestamps, cell text."""

from __future__ import annotations

import datetime as dt
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
