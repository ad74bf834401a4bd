"""Write any pool `open_pool` reads (an image folder, an .npz, a pool directory) as a pool
directory, streaming: O(chunk) rows in memory whatever the pool's size.

Why: an image folder is read in place, but every round then decodes every image again (about
a fifth of a round's time for PNGs, `benchmarks/pool_formats.py`); converting once makes the
rounds read raw arrays. The rows, labels, ids and class names are copied as they are (stored
dtype and scale kept), so a campaign on the copy acquires what it acquires on the original.
`PoolWriter` writes pool.json last: a conversion that dies halfway leaves a folder that is
refused as unfinished, never a pool that looks whole.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from baldflow.data.ondisk import (
    DATA_FILES,
    META_FILE,
    DiskPool,
    PoolExistsError,
    PoolWriter,
)
from baldflow.data.pool_formats import open_pool
from baldflow.data.row_pool import RowPool

# Rows read and written at a time: 8,192 28x28 images are 6 MB as uint8.
CONVERT_CHUNK_ROWS = 8192


def convert_pool(
    source: str | Path | RowPool,
    out: str | Path,
    *,
    chunk_rows: int = CONVERT_CHUNK_ROWS,
    progress: Callable[[int, int], None] | None = None,
) -> DiskPool:
    """Copy `source` into a new pool directory `out` and return it opened.

    Ids are checked first (one streamed pass; a duplicate or an id with a control character is
    refused before anything is written). `progress(done, total)` is called after each chunk.
    An existing `out` is refused (PoolExistsError), so nothing is overwritten by mistake.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    out = Path(out)
    _check_target(out)
    pool = source if isinstance(source, RowPool) else open_pool(source)
    pool.check_ids()
    with PoolWriter(
        out,
        pool.sample_shape,
        pool.dtype,
        pool.count,
        class_names=pool.class_names,
        scale=pool.scale,
    ) as writer:
        for start in range(0, pool.count, chunk_rows):
            stop = min(pool.count, start + chunk_rows)
            writer.write(
                pool.raw_rows(start, stop), pool.labels(start, stop), pool.ids(start, stop)
            )
            if progress is not None:
                progress(stop, pool.count)
    return DiskPool.open(out)


def _check_target(out: Path) -> None:
    """`out` must be new, empty, or an unfinished conversion (pool files but no pool.json):
    never a complete pool, and never a folder of other files (the image folder itself, say),
    which the pool's files would be written into."""
    if not out.exists():
        return
    if not out.is_dir():
        raise PoolExistsError(f"{out} exists and is not a folder; choose a new pool folder")
    if (out / META_FILE).exists():
        raise PoolExistsError(f"{out} already holds a complete pool; choose a new folder")
    others = sorted(entry.name for entry in out.iterdir() if entry.name not in DATA_FILES)
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise PoolExistsError(
            f"{out} is not empty (it holds {shown}); a pool is written into a new or empty folder"
        )
