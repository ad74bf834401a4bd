"""A pool directory on disk, written in batches and read by row ranges (`DiskPool`).

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
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap

from baldflow.common import file_entry, short_repr, text_problem
from baldflow.data.row_pool import (
    CHUNK_BYTES,
    DEFAULT_SCALE,
    SUPPORTED_DTYPES,
    UNKNOWN_LABEL,
    DiskPoolError,
    PoolFormatError,
    PoolNotFoundError,
    RowPool,
    find_duplicate_ids,
    handle_size,
    id_key,
    pread_into,
)
from baldflow.data.splits import DataSourceError, check_texts

FORMAT_VERSION = 1
X_FILE, Y_FILE, IDS_FILE, META_FILE = "x.npy", "y.npy", "ids.txt", "pool.json"
DATA_FILES = (X_FILE, Y_FILE, IDS_FILE)
# uint8 rows are scaled to float through a buffer of this size (see `DiskPool.rows`).
READ_CHUNK_BYTES = 1 << 20


class IncompletePoolError(DiskPoolError):
    """The directory holds a pool whose writing did not finish (no pool.json, or a data file
    missing): reading it would return rows that were never written."""


class PoolExistsError(DiskPoolError, FileExistsError):
    """A complete pool is already in the directory and overwrite was not asked for."""


class PoolWriteError(DiskPoolError):
    """A batch does not fit the pool being written (shape, dtype, labels, too many rows)."""


class PoolIdError(PoolWriteError):
    """A sample id is not acceptable text, or appears twice."""


# ---------------------------------------------------------------------------------------------
# Low-level positioned I/O.


def _pwrite_all(fd: int, data: np.ndarray, position: int) -> None:
    if data.size == 0:
        return
    view = memoryview(np.ascontiguousarray(data).reshape(-1)).cast("B")
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], position + done)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomically(path: Path, payload: dict) -> None:
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
    fsync_path(path.parent)


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
            fsync_path(self.directory)
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
            hashes[i] = hash(id_key(sample_id))
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
        found = find_duplicate_ids(
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
        write_json_atomically(self.directory / META_FILE, meta)

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
        self._set_layout(meta)
        self._x_offset, self._y_offset = int(x.offset), int(y.offset)
        self._x_fd = os.open(directory / X_FILE, os.O_RDONLY)
        self._y_fd = os.open(directory / Y_FILE, os.O_RDONLY)
        self._ids_fd = os.open(directory / IDS_FILE, os.O_RDONLY)
        self._offsets: np.ndarray | None = None
        self._index = None

    def _set_layout(self, meta: dict) -> None:
        """The attributes pool.json gives (a pool in object storage sets them the same way)."""
        self.count = int(meta["count"])
        self.shape = tuple(int(s) for s in meta["shape"])
        self.sample_shape = self.shape[1:]
        self.dtype = SUPPORTED_DTYPES[meta["dtype"]]
        self.scale = float(meta["scale"])
        self.class_names = list(meta["class_names"]) if meta.get("class_names") else None
        self._row_bytes = self.dtype.itemsize * math.prod(self.sample_shape)

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
        pread_into(self._x_fd, out, self._x_offset + start * self._row_bytes)
        return out

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) as float32 (stored values times pool.json's scale).

        The float output is the only shard-sized allocation: uint8 rows are read through a
        small reused buffer (READ_CHUNK_BYTES) and scaled into it piece by piece, so a sweep
        does not leave shard-sized temporaries of several sizes for the allocator to keep."""
        start, stop = self._check_range(start, stop)
        out = np.empty((stop - start, *self.sample_shape), dtype=np.float32)
        position = self._x_offset + start * self._row_bytes
        if self.dtype == np.float32:
            pread_into(self._x_fd, out, position)
            if self.scale != 1.0:
                out *= np.float32(self.scale)
            return torch.from_numpy(out)
        step = max(1, READ_CHUNK_BYTES // max(1, self._row_bytes))
        buffer = np.empty((min(step, stop - start), *self.sample_shape), dtype=self.dtype)
        scale = np.float32(self.scale)
        for i in range(0, stop - start, step):
            piece = buffer[: min(step, stop - start - i)]
            pread_into(self._x_fd, piece, position + i * self._row_bytes)
            np.multiply(piece, scale, out=out[i : i + piece.shape[0]], dtype=np.float32)
        return torch.from_numpy(out)

    def labels(self, start: int, stop: int) -> torch.Tensor:
        """Labels [start, stop) as int64 (-1: unknown or held back)."""
        start, stop = self._check_range(start, stop)
        out = np.empty(stop - start, dtype=np.int64)
        pread_into(self._y_fd, out, self._y_offset + start * 8)
        return torch.from_numpy(out)

    def ids(self, start: int, stop: int) -> list[str]:
        """Sample ids of rows [start, stop): one read of their bytes of ids.txt."""
        start, stop = self._check_range(start, stop)
        offsets = self._line_offsets()
        begin, end = int(offsets[start]), int(offsets[stop])
        buffer = np.empty(end - begin, dtype=np.uint8)
        pread_into(self._ids_fd, buffer, begin)
        text = buffer.tobytes().decode("utf-8")
        return text.split("\n")[:-1] if text else []

    def _line_offsets(self) -> np.ndarray:
        """Byte offset of each id's line in ids.txt, plus the file's end: built by one streamed
        pass over the file, checked against the row count."""
        if self._offsets is None:
            size = handle_size(self._ids_fd)
            ends = []
            position = 0
            while position < size:
                chunk = np.empty(min(CHUNK_BYTES, size - position), dtype=np.uint8)
                pread_into(self._ids_fd, chunk, position)
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
            files[name] = file_entry(self.directory / name)
        return files

    def file_stamps(self) -> dict[str, list[int]]:
        stamps = {}
        for name in (*DATA_FILES, META_FILE):
            stat = os.stat(self.directory / name)
            stamps[name] = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
        return stamps


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
