"""A pool that lives on disk and is read by row ranges, with a small manifest for versioning.

Why: pools grow to millions of samples, scored in shards by Dask workers. Loading the whole pool
into every worker (as `DataSplits` does) would cost N rows of memory per worker and a full read
per round; here a worker opens the pool in O(1) and reads only its row range, paying O(shard).

The directory format (format version 1):

- ``x.npy``: the samples, float32 or uint8, shape [N, ...] (a plain .npy: any numpy reads it);
- ``y.npy``: int64 labels, -1 for a label that is unknown or held back;
- ``ids.txt``: one stable sample id per line, UTF-8, ``\\n``-terminated;
- ``pool.json``: shape, dtype, the scale that turns stored values into floats (1/255 for
  uint8 images), class names, count and format version. It is written last and atomically,
  so a directory without it is a pool whose writing did not finish, and it is refused.

Ids are untrusted text (file names, ids from a customer's export): they follow the rules of
`baldflow.common.text_problem` (no newline, control or invisible format characters, ...) and
must be unique; both are checked while writing, with the row number in the error.

Reads of x and y go through positioned file reads (``os.preadv``) into fresh arrays rather than
through the memory map: pages touched through a map stay counted in the process's resident set
until the kernel reclaims them, so a worker sweeping the pool through a map would look as if it
held the whole file. The maps (`DiskPool.x`, `DiskPool.y`) remain for ad-hoc numpy indexing.
Writes likewise go through ``os.pwrite`` into a file laid out by ``open_memmap``, for the same
reason (dirty mapped pages count as resident until written back).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap

from baldflow.common import short_repr, text_problem
from baldflow.data.splits import DataNotFoundError, DataSourceError

FORMAT_VERSION = 1
X_FILE, Y_FILE, IDS_FILE, META_FILE = "x.npy", "y.npy", "ids.txt", "pool.json"
DATA_FILES = (X_FILE, Y_FILE, IDS_FILE)
SUPPORTED_DTYPES = {"uint8": np.dtype(np.uint8), "float32": np.dtype(np.float32)}
DEFAULT_SCALE = {"uint8": 1.0 / 255.0, "float32": 1.0}
UNKNOWN_LABEL = -1
# Hashing and id scans stream files in chunks of this size: memory stays bounded for any N.
CHUNK_BYTES = 4 << 20
# uint8 rows are scaled to float through a buffer of this size (see `DiskPool.rows`).
READ_CHUNK_BYTES = 1 << 20


class DiskPoolError(DataSourceError):
    """An on-disk pool cannot be written or read as asked."""


class PoolNotFoundError(DiskPoolError, DataNotFoundError):
    """The pool directory does not exist."""


class IncompletePoolError(DiskPoolError):
    """The directory holds a pool whose writing did not finish (no pool.json, or a data file
    missing): reading it would return rows that were never written."""


class PoolFormatError(DiskPoolError):
    """A pool's files contradict pool.json or each other (corrupt, edited or truncated)."""


class PoolExistsError(DiskPoolError, FileExistsError):
    """A complete pool is already in the directory and overwrite was not asked for."""


class PoolWriteError(DiskPoolError):
    """A batch does not fit the pool being written (shape, dtype, labels, too many rows)."""


class PoolIdError(PoolWriteError):
    """A sample id is not acceptable text, or appears twice."""


class PoolRangeError(DiskPoolError, IndexError):
    """A row range or shard count outside the pool."""


class UnknownIdError(DiskPoolError, KeyError):
    """A sample id asked for is not in the pool."""

    def __str__(self) -> str:  # KeyError would show the message quoted as a repr
        return str(self.args[0]) if self.args else ""


# ---------------------------------------------------------------------------------------------
# Low-level positioned I/O.


def _pread_into(fd: int, buffer: np.ndarray, position: int) -> None:
    """Fill `buffer` (C-contiguous) from `fd` at byte `position`, looping over short reads."""
    if buffer.size == 0:
        return
    view = memoryview(buffer.reshape(-1)).cast("B")
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], position + done)
        if got == 0:
            raise PoolFormatError(
                f"file ended {len(view) - done} bytes early at byte {position + done}"
            )
        done += got


def _pwrite_all(fd: int, data: np.ndarray, position: int) -> None:
    if data.size == 0:
        return
    view = memoryview(np.ascontiguousarray(data).reshape(-1)).cast("B")
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], position + done)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_atomically(path: Path, payload: dict) -> None:
    """Write to a temporary name, fsync, rename: a reader sees the old file or the whole new
    one, never a half-written one (pool.json's presence is what marks a pool complete)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_path(path.parent)


def _id_key(sample_id: str) -> str:
    """Two ids that differ only in Unicode normalisation look identical: compare them as one
    (the same rule as `check_texts`). ASCII ids, the common case, skip the normalisation."""
    return sample_id if sample_id.isascii() else unicodedata.normalize("NFC", sample_id)


def _as_numpy(values, what: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    if isinstance(values, np.ndarray):
        return values
    try:
        return np.asarray(values)
    except (TypeError, ValueError) as error:
        raise PoolWriteError(f"{what} is not array-like: {error}") from error


# ---------------------------------------------------------------------------------------------
# Writing.


class PoolWriter:
    """Builds a pool directory from batches, holding O(batch) rows in memory.

    `shape` is the shape of one sample (e.g. (1, 28, 28)); `count` the number of rows the pool
    will have, known up front so x.npy and y.npy can be laid out at their final size and filled
    in place. `write` appends a batch; `close` checks every row was written and every id is
    unique, then writes pool.json last. Used as a context manager, an exception inside the block
    leaves the directory incomplete (no pool.json), which `DiskPool.open` refuses.

    Re-running is safe: a directory holding a complete pool is refused unless `overwrite=True`,
    in which case pool.json is removed first, so an interrupted overwrite leaves an incomplete
    pool rather than new rows under the old metadata. An incomplete directory (an earlier run
    that died) is written over without asking: it holds nothing usable.

    Duplicate ids are found at `close` from one 8-byte hash per row (8 MB per million rows),
    not a set of N strings; rows whose hashes collide are compared as text before refusing.
    """

    def __init__(
        self,
        directory: str | Path,
        shape: Sequence[int],
        dtype: str | np.dtype,
        count: int,
        *,
        class_names: Sequence[str] | None = None,
        scale: float | None = None,
        overwrite: bool = False,
    ) -> None:
        self.directory = Path(directory)
        dtype_name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
        if dtype_name not in SUPPORTED_DTYPES:
            raise PoolWriteError(
                f"pool dtype must be one of {', '.join(SUPPORTED_DTYPES)}, got {dtype!r}"
            )
        if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 0:
            raise PoolWriteError(f"pool count must be an integer >= 0, got {count!r}")
        sample_shape = tuple(int(s) for s in shape)
        if any(s < 1 for s in sample_shape):
            raise PoolWriteError(f"sample shape must have positive sizes, got {tuple(shape)}")
        scale = DEFAULT_SCALE[dtype_name] if scale is None else float(scale)
        if not math.isfinite(scale) or scale <= 0:
            raise PoolWriteError(f"scale must be a positive finite number, got {scale!r}")
        if class_names is not None:
            class_names = [str(c) for c in class_names]
            from baldflow.data.splits import check_texts

            try:
                check_texts("class name", class_names, f"pool {self.directory}")
            except DataSourceError as error:
                raise PoolWriteError(str(error)) from error
        self.sample_shape = sample_shape
        self.dtype = SUPPORTED_DTYPES[dtype_name]
        self.count = int(count)
        self.scale = scale
        self.class_names = class_names
        self.written = 0
        self._closed = False

        meta = self.directory / META_FILE
        if meta.exists():
            if not overwrite:
                raise PoolExistsError(
                    f"{self.directory} already holds a complete pool; pass overwrite=True to "
                    f"replace it"
                )
            meta.unlink()
            _fsync_path(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)

        # open_memmap lays out each .npy (header + full size, sparse until written); the rows
        # are then written with pwrite at the data offset (see the module docstring for why).
        self._x_offset = self._layout(X_FILE, self.dtype, (self.count, *sample_shape))
        self._y_offset = self._layout(Y_FILE, np.dtype(np.int64), (self.count,))
        self._x_row_bytes = self.dtype.itemsize * math.prod(sample_shape)
        self._x_fd = os.open(self.directory / X_FILE, os.O_WRONLY)
        self._y_fd = os.open(self.directory / Y_FILE, os.O_WRONLY)
        self._ids_fd = os.open(self.directory / IDS_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        self._ids_bytes = 0
        self._hashes = np.empty(self.count, dtype=np.int64)

    def _layout(self, name: str, dtype: np.dtype, shape: tuple[int, ...]) -> int:
        array = open_memmap(self.directory / name, mode="w+", dtype=dtype, shape=shape)
        offset = int(array.offset)
        del array
        return offset

    def write(self, x_batch, y_batch, ids_batch: Sequence[str]) -> None:
        """Append rows: `x_batch` [B, *shape] in the pool's dtype (a float batch is refused by a
        uint8 pool rather than silently truncated), `y_batch` [B] integer labels (-1 unknown),
        `ids_batch` B ids. Nothing of a refused batch is written."""
        if self._closed:
            raise PoolWriteError(f"pool writer for {self.directory} is already closed")
        x = _as_numpy(x_batch, "x_batch")
        y = _as_numpy(y_batch, "y_batch")
        ids = list(ids_batch)
        n = x.shape[0] if x.ndim else -1
        if x.ndim == 0 or tuple(x.shape[1:]) != self.sample_shape:
            expected = ", ".join(["B", *map(str, self.sample_shape)])
            raise PoolWriteError(f"x_batch has shape {tuple(x.shape)}, expected [{expected}]")
        if y.shape != (n,) or len(ids) != n:
            raise PoolWriteError(
                f"batch sizes differ: x_batch has {n} rows, y_batch shape {tuple(y.shape)}, "
                f"{len(ids)} ids"
            )
        if self.written + n > self.count:
            raise PoolWriteError(
                f"batch of {n} rows would exceed the pool's count {self.count} "
                f"({self.written} already written)"
            )
        if x.dtype != self.dtype:
            same_kind = x.dtype.kind == self.dtype.kind or (
                self.dtype.kind == "f" and x.dtype.kind in "fiu"
            )
            if not same_kind or (self.dtype.kind == "u" and x.dtype.itemsize > 1):
                raise PoolWriteError(
                    f"x_batch has dtype {x.dtype}, the pool stores {self.dtype}; convert it "
                    f"explicitly (rounding and clipping are the caller's choice)"
                )
            x = x.astype(self.dtype)
        if y.dtype.kind not in "iu":
            raise PoolWriteError(f"y_batch must hold integers, got dtype {y.dtype}")
        y = y.astype(np.int64)
        if n:
            low, high = int(y.min()), int(y.max())
            limit = len(self.class_names) if self.class_names is not None else None
            if low < UNKNOWN_LABEL or (limit is not None and high >= limit):
                bad = int(np.flatnonzero((y < UNKNOWN_LABEL) | (y >= (limit or 2**62)))[0])
                raise PoolWriteError(
                    f"row {self.written + bad}: label {int(y[bad])} is outside "
                    f"[-1, {limit if limit is not None else 'inf'}) (-1 marks an unknown label)"
                )
        hashes = np.empty(n, dtype=np.int64)
        for i, sample_id in enumerate(ids):
            problem = text_problem(sample_id)
            if problem is not None:
                raise PoolIdError(
                    f"{self.directory}: sample id {short_repr(str(sample_id))} at row "
                    f"{self.written + i} {problem}"
                )
            hashes[i] = hash(_id_key(sample_id))
        start = self.written
        _pwrite_all(self._x_fd, x, self._x_offset + start * self._x_row_bytes)
        _pwrite_all(self._y_fd, y, self._y_offset + start * 8)
        encoded = np.frombuffer("".join(f"{i}\n" for i in ids).encode("utf-8"), np.uint8)
        _pwrite_all(self._ids_fd, encoded, self._ids_bytes)
        self._ids_bytes += encoded.size
        self._hashes[start : start + n] = hashes
        self.written += n

    def _check_unique(self) -> None:
        """Refuse duplicate ids, naming both rows (the first pair in row order)."""
        if self.count < 2:
            return
        order = np.argsort(self._hashes, kind="stable")
        found = _duplicate_ids(
            self._hashes[order], order, lambda rows: _read_id_rows(self.directory / IDS_FILE, rows)
        )
        if found is not None:
            first, second, texts, pairs = found
            how = (
                "appears twice"
                if texts[first] == texts[second]
                else (
                    f"looks the same as {short_repr(texts[first])} (they differ only in Unicode "
                    f"normalisation)"
                )
            )
            raise PoolIdError(
                f"{self.directory}: sample id {short_repr(texts[second])} {how}: rows {first} "
                f"and {second}; sample ids must be unique"
                + (f" ({pairs} duplicate pairs in all)" if pairs > 1 else "")
            )

    def close(self) -> None:
        """Check the pool is whole, flush everything to disk, then write pool.json (atomically:
        it is what marks the pool complete)."""
        if self._closed:
            return
        try:
            if self.written != self.count:
                raise PoolWriteError(
                    f"{self.directory}: {self.written} of {self.count} rows written; the pool "
                    f"stays incomplete"
                )
            self._check_unique()
            os.fsync(self._ids_fd)
            os.fsync(self._x_fd)
            os.fsync(self._y_fd)
        finally:
            self._release()
        meta = {
            "format_version": FORMAT_VERSION,
            "count": self.count,
            "shape": [self.count, *self.sample_shape],
            "dtype": self.dtype.name,
            "scale": self.scale,
            "class_names": self.class_names,
            "files": {"x": X_FILE, "y": Y_FILE, "ids": IDS_FILE},
        }
        _write_json_atomically(self.directory / META_FILE, meta)

    def abort(self) -> None:
        """Stop without writing pool.json: the directory stays an incomplete pool."""
        self._release()

    def _release(self) -> None:
        if self._closed:
            return
        self._closed = True
        os.close(self._ids_fd)
        os.close(self._x_fd)
        os.close(self._y_fd)
        self._hashes = np.empty(0, dtype=np.int64)

    def __enter__(self) -> PoolWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _duplicate_ids(sorted_hashes: np.ndarray, order: np.ndarray, read_ids) -> tuple | None:
    """The first pair of rows (in row order) whose ids are the same up to Unicode
    normalisation, from the rows' id hashes sorted (`order`: their rows), or None.

    Equal hashes are compared by their texts (a collision is not a duplicate); `read_ids(rows)`
    gives the ids of sorted rows, read once for the few rows concerned. Returns (first row,
    second row, {row: id}, how many such pairs there are)."""
    same = np.flatnonzero(sorted_hashes[1:] == sorted_hashes[:-1])
    if same.size == 0:
        return None
    rows = sorted({int(order[i]) for i in same} | {int(order[i + 1]) for i in same})
    texts = dict(zip(rows, read_ids(rows), strict=True))
    pairs = []
    for i in same:
        a, b = sorted((int(order[i]), int(order[i + 1])))
        if _id_key(texts[a]) == _id_key(texts[b]):
            pairs.append((b, a))
    if not pairs:
        return None
    second, first = min(pairs)
    return first, second, texts, len(pairs)


def _read_id_rows(path: Path, rows: list[int]) -> list[str]:
    """The ids at sorted `rows` of an ids file, by one streaming pass (for the few rows of a
    duplicate report; `DiskPool.ids` is the indexed way)."""
    wanted = iter(rows)
    target = next(wanted, None)
    out = []
    with open(path, encoding="utf-8", newline="\n") as f:
        for row, line in enumerate(f):
            if target is None:
                break
            if row == target:
                out.append(line.rstrip("\n"))
                target = next(wanted, None)
    return out


# ---------------------------------------------------------------------------------------------
# Reading.


class RowPool:
    """What every pool read by row ranges offers, whatever holds its rows.

    A subclass sets `directory` (the path it reopens from: a folder or a file), `count`,
    `shape`, `sample_shape`, `dtype` (as stored: uint8 or float32), `scale` and `class_names`,
    and implements `raw_rows`, `labels`, `ids`, `content_files` and `file_stamps`; the float
    rows, shard ranges and the id index come from here. `DiskPool` (this module's format) is
    one; `baldflow.data.lazy_pools` has an uncompressed .npz and an image folder read in place.
    Open any of them with `open_pool`.
    """

    directory: Path
    count: int
    shape: tuple[int, ...]
    sample_shape: tuple[int, ...]
    dtype: np.dtype
    scale: float
    class_names: list[str] | None
    _index: tuple[np.ndarray, np.ndarray] | None = None

    def _describe(self, directory, count, sample_shape, dtype, class_names) -> None:
        """Set the layout attributes; the scale is the stored dtype's default (1/255 for
        uint8: images)."""
        self.directory = Path(directory)
        self.count = int(count)
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.shape = (self.count, *self.sample_shape)
        self.dtype = np.dtype(dtype)
        self.scale = DEFAULT_SCALE[self.dtype.name]
        self.class_names = list(class_names) if class_names else None
        self._index = None

    def __len__(self) -> int:
        return self.count

    def close(self) -> None:
        """Release what the reader holds open (nothing, unless a subclass says otherwise)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- what a subclass provides -------------------------------------------------------------

    def raw_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as stored (uint8 or float32), a fresh array."""
        raise NotImplementedError

    def labels(self, start: int, stop: int) -> torch.Tensor:
        """Labels [start, stop) as int64 (-1: unknown or held back)."""
        raise NotImplementedError

    def ids(self, start: int, stop: int) -> list[str]:
        """Sample ids of rows [start, stop)."""
        raise NotImplementedError

    def content_files(self) -> dict[str, dict]:
        """{name: {"bytes", "sha256", ...}} of what holds the pool's content, for `manifest`
        (streamed: never a whole file in memory)."""
        raise NotImplementedError

    def file_stamps(self) -> dict:
        """Sizes, mtimes and inodes of the pool's files: `cached_manifest` rehashes when they
        change."""
        raise NotImplementedError

    # -- generic -----------------------------------------------------------------------------

    def _check_range(self, start: int, stop: int) -> tuple[int, int]:
        start, stop = int(start), int(stop)
        if not 0 <= start <= stop <= self.count:
            raise PoolRangeError(
                f"row range [{start}, {stop}) is outside the pool's rows [0, {self.count})"
            )
        return start, stop

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) as float32 (stored values times the pool's scale)."""
        raw = self.raw_rows(start, stop)
        out = raw.astype(np.float32, copy=False)
        if self.scale != 1.0:
            out = np.multiply(out, np.float32(self.scale), dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(out))

    def shard_ranges(self, shards: int) -> list[tuple[int, int]]:
        """`shards` contiguous row ranges covering the pool in order, sizes differing by at most
        one; with more shards than rows some ranges are empty (a worker gets nothing to do)."""
        if isinstance(shards, bool) or not isinstance(shards, int | np.integer) or shards < 1:
            raise PoolRangeError(f"shards must be an integer >= 1, got {shards!r}")
        return shard_ranges(self.count, int(shards))

    def _id_index(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted id hashes, their rows), built once by streaming the ids in shards."""
        if self._index is None:
            hashes = np.empty(self.count, dtype=np.int64)
            for start, stop in shard_ranges(self.count, max(1, math.ceil(self.count / 65536))):
                chunk = self.ids(start, stop)
                hashes[start:stop] = np.fromiter(
                    (hash(_id_key(i)) for i in chunk), dtype=np.int64, count=stop - start
                )
            order = np.argsort(hashes, kind="stable")
            self._index = (hashes[order], order)
        return self._index

    def check_ids(self) -> None:
        """Refuse ids that are not usable sample ids (`baldflow.common.text_problem`) or that
        occur twice, naming the rows. One streamed pass plus the id index (16 bytes a row).

        A `DiskPool` was checked when it was written; a pool read in place (an .npz, an image
        folder) was not, so the flow checks it once when a campaign opens it."""
        for start, stop in shard_ranges(self.count, max(1, math.ceil(self.count / 65536))):
            for row, sample_id in enumerate(self.ids(start, stop), start):
                problem = text_problem(sample_id)
                if problem:
                    raise PoolFormatError(
                        f"{self.directory}: row {row} has the id {short_repr(sample_id)}, "
                        f"which {problem}"
                    )
        sorted_hashes, order = self._id_index()
        found = _duplicate_ids(
            sorted_hashes, order, lambda rows: [self.ids(r, r + 1)[0] for r in rows]
        )
        if found is not None:
            first, second, texts, _ = found
            raise PoolFormatError(
                f"{self.directory}: rows {first} and {second} have the same id "
                f"{short_repr(texts[first])}; sample ids must be unique"
            )

    def positions(self, ids: Iterable[str]) -> np.ndarray:
        """Row numbers of sample ids, in the order given (UnknownIdError names the first id not
        in the pool)."""
        ids = list(ids)
        sorted_hashes, order = self._id_index()
        wanted = np.fromiter((hash(_id_key(i)) for i in ids), dtype=np.int64, count=len(ids))
        left = np.searchsorted(sorted_hashes, wanted, side="left")
        right = np.searchsorted(sorted_hashes, wanted, side="right")
        out = np.empty(len(ids), dtype=np.int64)
        for k, (sample_id, lo, hi) in enumerate(zip(ids, left, right, strict=True)):
            row = next(
                (int(r) for r in order[lo:hi] if self.ids(int(r), int(r) + 1)[0] == sample_id),
                None,
            )
            if row is None:
                raise UnknownIdError(
                    f"sample id {short_repr(str(sample_id))} is not in the pool {self.directory}"
                )
            out[k] = row
        return out

    def rows_by_ids(self, ids: Iterable[str]) -> torch.Tensor:
        """Rows of the given sample ids as float32, in the order given: the labeled set for
        training. Reads only those rows (ascending, so the disk sees one forward pass)."""
        rows = self.positions(ids)
        out = torch.empty((rows.size, *self.sample_shape), dtype=torch.float32)
        for k in np.argsort(rows, kind="stable"):
            out[k] = self.rows(int(rows[k]), int(rows[k]) + 1)[0]
        return out

    def labels_by_ids(self, ids: Iterable[str]) -> torch.Tensor:
        """Labels of the given sample ids, in the order given (-1: unknown)."""
        rows = self.positions(ids)
        out = torch.empty(rows.size, dtype=torch.int64)
        for k in np.argsort(rows, kind="stable"):
            out[k] = self.labels(int(rows[k]), int(rows[k]) + 1)[0]
        return out


class DiskPool(RowPool):
    """A complete pool directory in this module's format, opened for reading by row ranges.

    Opening reads pool.json and maps x.npy/y.npy (mmap_mode="r"): O(1) memory. `rows`,
    `labels` and `ids` cost O(stop - start). Two things are built lazily, once, on first need:

    - the line offsets of ids.txt (8 bytes per row: 8 MB per million), for `ids`;
    - the id index for `positions`/`rows_by_ids`: one 8-byte hash per row plus its sort order
      (16 MB per million), candidates checked against the id text, instead of a dict of N
      strings (about 150 MB per million in CPython).

    A DiskPool pickles as its directory and reopens on unpickling, so it can be sent to Dask
    workers; each process then holds its own file descriptors and lazy indexes.
    """

    def __init__(self, directory: Path, meta: dict, x: np.memmap, y: np.memmap) -> None:
        self.directory = directory
        self.meta = meta
        self.x = x
        self.y = y
        self.count = int(meta["count"])
        self.shape = tuple(int(s) for s in meta["shape"])
        self.sample_shape = self.shape[1:]
        self.dtype = SUPPORTED_DTYPES[meta["dtype"]]
        self.scale = float(meta["scale"])
        self.class_names = list(meta["class_names"]) if meta.get("class_names") else None
        self._row_bytes = self.dtype.itemsize * math.prod(self.sample_shape)
        self._x_fd = os.open(directory / X_FILE, os.O_RDONLY)
        self._y_fd = os.open(directory / Y_FILE, os.O_RDONLY)
        self._ids_fd = os.open(directory / IDS_FILE, os.O_RDONLY)
        self._offsets: np.ndarray | None = None
        self._index = None

    @classmethod
    def open(cls, directory: str | Path) -> DiskPool:
        """Open a complete pool; refuses a missing, incomplete or inconsistent one with an
        error that says which."""
        directory = Path(directory)
        if not directory.is_dir():
            raise PoolNotFoundError(f"pool directory {directory} does not exist")
        meta_path = directory / META_FILE
        if not meta_path.is_file():
            raise IncompletePoolError(
                f"{directory} has no {META_FILE}: the pool's writing did not finish (or this "
                f"is not a pool directory); rewrite it"
            )
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise PoolFormatError(f"{meta_path} is not valid JSON: {error}") from error
        missing = [name for name in DATA_FILES if not (directory / name).is_file()]
        if missing:
            raise IncompletePoolError(f"{directory}: {', '.join(missing)} missing")
        _check_meta(meta_path, meta)
        x = _map(directory / X_FILE, SUPPORTED_DTYPES[meta["dtype"]], tuple(meta["shape"]))
        y = _map(directory / Y_FILE, np.dtype(np.int64), (int(meta["count"]),))
        return cls(directory, meta, x, y)

    def __repr__(self) -> str:
        return f"DiskPool({str(self.directory)!r}, shape={self.shape}, dtype={self.dtype.name})"

    def __reduce__(self):
        return (DiskPool.open, (str(self.directory),))

    def close(self) -> None:
        """Release the file descriptors (the maps go with the object)."""
        for fd in (self._x_fd, self._y_fd, self._ids_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._x_fd = self._y_fd = self._ids_fd = -1

    def __del__(self) -> None:
        if getattr(self, "_ids_fd", -1) >= 0:
            self.close()

    # -- ranges ------------------------------------------------------------------------------

    def raw_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as stored (uint8 or float32), a fresh array."""
        start, stop = self._check_range(start, stop)
        out = np.empty((stop - start, *self.sample_shape), dtype=self.dtype)
        _pread_into(self._x_fd, out, int(self.x.offset) + start * self._row_bytes)
        return out

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) as float32 (stored values times pool.json's scale).

        The float output is the only shard-sized allocation: uint8 rows are read through a
        small reused buffer (READ_CHUNK_BYTES) and scaled into it piece by piece, so a sweep
        does not leave shard-sized temporaries of several sizes for the allocator to keep."""
        start, stop = self._check_range(start, stop)
        out = np.empty((stop - start, *self.sample_shape), dtype=np.float32)
        position = int(self.x.offset) + start * self._row_bytes
        if self.dtype == np.float32:
            _pread_into(self._x_fd, out, position)
            if self.scale != 1.0:
                out *= np.float32(self.scale)
            return torch.from_numpy(out)
        step = max(1, READ_CHUNK_BYTES // max(1, self._row_bytes))
        buffer = np.empty((min(step, stop - start), *self.sample_shape), dtype=self.dtype)
        scale = np.float32(self.scale)
        for i in range(0, stop - start, step):
            piece = buffer[: min(step, stop - start - i)]
            _pread_into(self._x_fd, piece, position + i * self._row_bytes)
            np.multiply(piece, scale, out=out[i : i + piece.shape[0]], dtype=np.float32)
        return torch.from_numpy(out)

    def labels(self, start: int, stop: int) -> torch.Tensor:
        """Labels [start, stop) as int64 (-1: unknown or held back)."""
        start, stop = self._check_range(start, stop)
        out = np.empty(stop - start, dtype=np.int64)
        _pread_into(self._y_fd, out, int(self.y.offset) + start * 8)
        return torch.from_numpy(out)

    def ids(self, start: int, stop: int) -> list[str]:
        """Sample ids of rows [start, stop): one read of their bytes of ids.txt."""
        start, stop = self._check_range(start, stop)
        offsets = self._line_offsets()
        begin, end = int(offsets[start]), int(offsets[stop])
        buffer = np.empty(end - begin, dtype=np.uint8)
        _pread_into(self._ids_fd, buffer, begin)
        text = buffer.tobytes().decode("utf-8")
        return text.split("\n")[:-1] if text else []

    def _line_offsets(self) -> np.ndarray:
        """Byte offset of each id's line in ids.txt, plus the file's end: built by one streamed
        pass over the file, checked against the row count."""
        if self._offsets is None:
            size = os.fstat(self._ids_fd).st_size
            ends = []
            position = 0
            while position < size:
                chunk = np.empty(min(CHUNK_BYTES, size - position), dtype=np.uint8)
                _pread_into(self._ids_fd, chunk, position)
                ends.append(np.flatnonzero(chunk == 10) + (position + 1))
                position += chunk.size
            newlines = np.concatenate([np.zeros(1, dtype=np.int64), *ends]).astype(np.int64)
            if newlines.size - 1 != self.count or (size and newlines[-1] != size):
                raise PoolFormatError(
                    f"{self.directory / IDS_FILE} holds {newlines.size - 1} complete lines, "
                    f"pool.json says {self.count} rows"
                )
            self._offsets = newlines
        return self._offsets

    def labels_by_ids(self, ids: Iterable[str]) -> torch.Tensor:
        """Labels of the given sample ids, in the order given (-1: unknown)."""
        rows = self.positions(ids)
        return torch.from_numpy(np.asarray(self.y[rows], dtype=np.int64))

    # -- manifest ------------------------------------------------------------------------------

    def content_files(self) -> dict[str, dict]:
        files = {}
        for name in DATA_FILES:
            path = self.directory / name
            files[name] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
        return files

    def file_stamps(self) -> dict[str, list[int]]:
        stamps = {}
        for name in (*DATA_FILES, META_FILE):
            stat = os.stat(self.directory / name)
            stamps[name] = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
        return stamps


def open_pool(path: str | Path) -> RowPool:
    """Open the pool at `path`, whatever its format: a `DiskPool` directory (it has a
    pool.json, or x.npy: an unfinished one is refused), an uncompressed `.npz` file, or an
    image folder (path/<class>/<image>) read in place (`baldflow.data.lazy_pools`)."""
    path = Path(path)
    if path.is_dir() and ((path / META_FILE).exists() or (path / X_FILE).exists()):
        return DiskPool.open(path)
    from baldflow.data.lazy_pools import open_lazy_pool

    return open_lazy_pool(path)


def shard_ranges(count: int, shards: int) -> list[tuple[int, int]]:
    """Split rows [0, count) into `shards` contiguous near-equal ranges (see
    `DiskPool.shard_ranges`); shard i is [i*count//shards, (i+1)*count//shards)."""
    if shards < 1:
        raise PoolRangeError(f"shards must be >= 1, got {shards}")
    return [(i * count // shards, (i + 1) * count // shards) for i in range(shards)]


def _check_meta(path: Path, meta: dict) -> None:
    """Refuse a pool.json this code cannot read faithfully."""
    if not isinstance(meta, dict):
        raise PoolFormatError(f"{path} does not hold a JSON object")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise PoolFormatError(
            f"{path}: format_version {version!r}, this baldflow reads version {FORMAT_VERSION}"
        )
    needed = ("count", "shape", "dtype", "scale")
    missing = [key for key in needed if key not in meta]
    if missing:
        raise PoolFormatError(f"{path} lacks {', '.join(missing)}")
    if meta["dtype"] not in SUPPORTED_DTYPES:
        raise PoolFormatError(f"{path}: unsupported dtype {meta['dtype']!r}")
    shape, count = meta["shape"], meta["count"]
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(s, int) and s >= 0 for s in shape)
        or shape[0] != count
    ):
        raise PoolFormatError(f"{path}: shape {shape!r} does not fit count {count!r}")


def _map(path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> np.memmap:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as error:
        raise PoolFormatError(f"{path} is not a readable .npy file: {error}") from error
    if array.dtype != dtype or tuple(array.shape) != tuple(shape):
        raise PoolFormatError(
            f"{path} holds {array.dtype}{list(array.shape)}, pool.json says "
            f"{dtype.name}{list(shape)}"
        )
    if not array.flags.c_contiguous:
        raise PoolFormatError(f"{path} is stored in Fortran order; pools are row-major")
    return array


# ---------------------------------------------------------------------------------------------
# Manifest.


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, streamed in CHUNK_BYTES pieces (never the whole file in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def manifest(pool: RowPool | str | Path) -> dict:
    """A small description of a pool's exact content, for versioning (e.g. with DVC) and for
    checking that every worker scored the same pool: count, shape, dtype, scale, class names,
    each data file's size and sha256, and one content hash over them (in the order the pool
    lists its files). A pool read in place also names its `source` format. Costs one streamed
    read of the files."""
    if not isinstance(pool, RowPool):
        pool = open_pool(pool)
    files = pool.content_files()
    combined = hashlib.sha256()
    for name, entry in files.items():
        combined.update(f"{name}\0{entry['sha256']}\n".encode())
    payload = {
        "format_version": FORMAT_VERSION,
        "count": pool.count,
        "shape": list(pool.shape),
        "dtype": pool.dtype.name,
        "scale": pool.scale,
        "class_names": pool.class_names,
        "files": files,
        "sha256": combined.hexdigest(),
    }
    if not isinstance(pool, DiskPool):
        payload["source"] = type(pool).SOURCE_NAME
    return payload


def write_manifest(pool: RowPool | str | Path, path: str | Path) -> dict:
    """Write `manifest(pool)` as JSON (sorted keys, atomically) to `path`; returns it."""
    payload = manifest(pool)
    _write_json_atomically(Path(path), payload)
    return payload


def cached_manifest(pool: RowPool, cache_dir: str | Path | None = None) -> dict:
    """`manifest(pool)`, remembered per pool directory with its files' sizes, mtimes and inodes.

    Why: the manifest hashes every byte (about 1.5 s per GB here), and a campaign asks for it
    at every start; a billion-sample pool would spend half an hour on it each time. A changed,
    replaced or rewritten file changes its stamp, so the cache cannot serve a stale hash.
    The cache lives in `cache_dir` (default $XDG_CACHE_HOME/baldflow/manifests), never in the
    pool's own directory, which may be read-only or shared.
    """
    if cache_dir is None:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        cache_dir = base / "baldflow" / "manifests"
    key = hashlib.sha256(str(pool.directory.resolve()).encode()).hexdigest()[:32]
    path = Path(cache_dir) / f"{key}.json"
    stamps = pool.file_stamps()
    with contextlib.suppress(OSError, ValueError, KeyError):
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached["stamps"] == stamps and cached["directory"] == str(pool.directory.resolve()):
            return cached["manifest"]
    payload = manifest(pool)
    with contextlib.suppress(OSError):  # no cache is only slower
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_json_atomically(
            path,
            {"directory": str(pool.directory.resolve()), "stamps": stamps, "manifest": payload},
        )
    return payload
