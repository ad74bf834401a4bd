"""The base of every pool read by row ranges, and what its formats share.

Why a module of its own: the pool directory format (`baldflow.data.ondisk`) and the pools read
in place (`baldflow.data.lazy_pools`: an .npz, an image folder) are siblings. Both build on
`RowPool` and the positioned reads, id keys and errors here, and neither
imports the other; `baldflow.data.pool_formats.open_pool` picks among them.
"""

from __future__ import annotations

import math
import os
import unicodedata
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from baldflow.common import short_repr, text_problem
from baldflow.data.splits import DataNotFoundError, DataSourceError

SUPPORTED_DTYPES = {"uint8": np.dtype(np.uint8), "float32": np.dtype(np.float32)}
DEFAULT_SCALE = {"uint8": 1.0 / 255.0, "float32": 1.0}
UNKNOWN_LABEL = -1
# Id scans stream files in chunks of this size: memory stays bounded for any N.
CHUNK_BYTES = 4 << 20


class DiskPoolError(DataSourceError):
    """An on-disk pool cannot be written or read as asked."""


class PoolNotFoundError(DiskPoolError, DataNotFoundError):
    """The pool directory does not exist."""


class PoolFormatError(DiskPoolError):
    """A pool's files contradict pool.json or each other (corrupt, edited or truncated)."""


class PoolRangeError(DiskPoolError, IndexError):
    """A row range or shard count outside the pool."""


class UnknownIdError(DiskPoolError, KeyError):
    """A sample id asked for is not in the pool."""

    def __str__(self) -> str:  # KeyError would show the message quoted as a repr
        return str(self.args[0]) if self.args else ""


# ---------------------------------------------------------------------------------------------
# Positioned reads, id keys and content hashes.


def pread_into(fd, buffer: np.ndarray, position: int) -> None:
    """Fill `buffer` (C-contiguous) from `fd` at byte `position`, looping over short reads.
    `fd` is a file descriptor, or an object with `read_into(buffer, position)` (a file in
    object storage, `baldflow.data.object_store.RemoteFile`)."""
    if buffer.size == 0:
        return
    if not isinstance(fd, int):
        fd.read_into(buffer, position)
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


def handle_size(fd) -> int:
    """The size in bytes of what `pread_into` reads: a file descriptor or a remote file."""
    return os.fstat(fd).st_size if isinstance(fd, int) else int(fd.size)


def id_key(sample_id: str) -> str:
    """Two ids that differ only in Unicode normalisation look identical: compare them as one
    (the same rule as `check_texts`). ASCII ids, the common case, skip the normalisation."""
    return sample_id if sample_id.isascii() else unicodedata.normalize("NFC", sample_id)


def shard_ranges(count: int, shards: int) -> list[tuple[int, int]]:
    """Split rows [0, count) into `shards` contiguous near-equal ranges (see
    `DiskPool.shard_ranges`); shard i is [i*count//shards, (i+1)*count//shards)."""
    if shards < 1:
        raise PoolRangeError(f"shards must be >= 1, got {shards}")
    return [(i * count // shards, (i + 1) * count // shards) for i in range(shards)]


def find_duplicate_ids(sorted_hashes: np.ndarray, order: np.ndarray, read_ids) -> tuple | None:
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
        if id_key(texts[a]) == id_key(texts[b]):
            pairs.append((b, a))
    if not pairs:
        return None
    second, first = min(pairs)
    return first, second, texts, len(pairs)


# ---------------------------------------------------------------------------------------------
# The base of every pool read by row ranges.


class RowPool:
    """What every pool read by row ranges offers, whatever holds its rows.

    A subclass sets `directory` (the path it reopens from: a folder or a file), `count`,
    `shape`, `sample_shape`, `dtype` (as stored: uint8 or float32), `scale` and `class_names`,
    and implements `raw_rows`, `labels`, `ids`, `content_files` and `file_stamps`; the float
    rows, shard ranges and the id index come from here. `baldflow.data.ondisk.DiskPool` (the
    pool directory format) is one; `baldflow.data.lazy_pools` has an uncompressed .npz and an
    image folder read in place. Open any of them with `baldflow.data.pool_formats.open_pool`.
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
        # A local path, or an object store location (`object_store.ObjectURL`) kept as it is.
        self.directory = Path(directory) if isinstance(directory, str | os.PathLike) else directory
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
                    (hash(id_key(i)) for i in chunk), dtype=np.int64, count=stop - start
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
        found = find_duplicate_ids(
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
        wanted = np.fromiter((hash(id_key(i)) for i in ids), dtype=np.int64, count=len(ids))
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
