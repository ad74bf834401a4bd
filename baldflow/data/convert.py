"""Write any pool `open_pool` reads (an image folder, an .npz, a pool directory) as a pool
directory, streaming: O(chunk) rows in memory whatever the pool's size.

Why: an image folder is read in place, but every round then decodes every image again (about
a fifth of a round's time for PNGs, `benchmarks/pool_formats.py`); converting once makes the
rounds read raw arrays. The rows, labels, ids and class names are copied as they are (stored
dtype and scale kept), so a campaign on the copy acquires what it acquires on the original.
`PoolWriter` writes pool.json last: a conversion that dies halfway leaves a folder that is
refused as unfinished, never a pool that looks whole.

Either side may be an `s3://bucket/prefix` URL: a source in object storage is read by byte
ranges (`baldflow.data.object_pools`); a target there is written as a pool directory in a local
temporary folder (as much disk as the pool), then uploaded file by file, pool.json last, so a
conversion that dies leaves a prefix without pool.json, refused like an unfinished folder.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from baldflow.data import object_store
from baldflow.data.object_pools import ObjectDiskPool
from baldflow.data.object_store import ObjectURL, is_url
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
    if is_url(out):
        return _convert_to_object_store(source, ObjectURL.parse(out), chunk_rows, progress)
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


def _convert_to_object_store(source, out: ObjectURL, chunk_rows: int, progress) -> DiskPool:
    """Write the pool locally, then upload its files under `out`, pool.json last."""
    _check_object_target(out)
    with tempfile.TemporaryDirectory(prefix="baldflow-convert-") as scratch:
        local = convert_pool(source, Path(scratch) / "pool", chunk_rows=chunk_rows,
                             progress=progress)  # fmt: skip
        local.close()
        for name in (*DATA_FILES, META_FILE):
            object_store.upload_file(Path(scratch) / "pool" / name, out / name)
    return ObjectDiskPool.open(out)


def _check_object_target(out: ObjectURL) -> None:
    """The object store's `_check_target`: a prefix with no objects, or only an unfinished
    pool's files (no pool.json)."""
    keys = object_store.list_keys(out, limit=20)
    if META_FILE in keys:
        raise PoolExistsError(f"{out} already holds a complete pool; choose a new prefix")
    others = sorted(key for key in keys if key not in DATA_FILES)
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise PoolExistsError(
            f"{out} is not empty (it holds {shown}); a pool is written under a new or empty "
            f"prefix"
        )


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
