"""Pools whose files are objects in a bucket: a pool directory under a key prefix
(`ObjectDiskPool`) and an uncompressed .npz object (`ObjectNpzPool`), read by row ranges.

Each is its local sibling (`baldflow.data.ondisk.DiskPool`, `baldflow.data.lazy_pools.NpzPool`)
with its files swapped for `baldflow.data.object_store.RemoteFile`s: the same offsets, the same
positioned reads (`row_pool.pread_into` calls the remote file's `read_into`), served by ranged
GETs through the process's block cache. Nothing is downloaded whole. Their manifests come from
what the store keeps (`object_store.content_entry`: the ETag when it is an MD5, else a streamed
sha256). They pickle as their URL: a Dask worker reopens them with its own client and cache.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from numpy.lib import format as npy_format

from baldflow.data import object_store
from baldflow.data.lazy_pools import NpzPool, _npz_members, npz_class_names
from baldflow.data.object_store import ObjectNotFoundError, ObjectURL, RemoteFile
from baldflow.data.ondisk import (
    DATA_FILES,
    IDS_FILE,
    META_FILE,
    X_FILE,
    Y_FILE,
    DiskPool,
    IncompletePoolError,
    _check_meta,
)
from baldflow.data.row_pool import PoolFormatError, PoolNotFoundError, RowPool


def open_object_pool(url: str | ObjectURL) -> RowPool:
    """The pool at an s3:// URL: a `.npz` object, or a pool directory (a prefix holding
    pool.json, x.npy, y.npy and ids.txt). Image folders are read from local disk only."""
    url = ObjectURL.parse(url)
    if url.suffix.lower() == ".npz":
        return ObjectNpzPool.open(url)
    return ObjectDiskPool.open(url)


def _npy_offset(remote: RemoteFile, dtype: np.dtype, shape: tuple[int, ...]) -> int:
    """Where a .npy object's data starts, after checking its header against pool.json."""
    reader = remote.reader()
    try:
        version = npy_format.read_magic(reader)
        read_header = {(1, 0): npy_format.read_array_header_1_0,
                       (2, 0): npy_format.read_array_header_2_0}.get(version)  # fmt: skip
        if read_header is None:
            raise ValueError(f".npy format version {version} is not read here")
        stored_shape, fortran, stored_dtype = read_header(reader)
    except ValueError as error:
        raise PoolFormatError(f"{remote.url} is not a readable .npy file: {error}") from error
    if stored_dtype != dtype or tuple(stored_shape) != tuple(shape):
        raise PoolFormatError(
            f"{remote.url} holds {stored_dtype}{list(stored_shape)}, pool.json says "
            f"{dtype.name}{list(shape)}"
        )
    if fortran and len(shape) > 1:
        raise PoolFormatError(f"{remote.url} is stored in Fortran order; pools are row-major")
    offset = reader.tell()
    expected = offset + dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    if remote.size < expected:
        raise PoolFormatError(f"{remote.url} has {remote.size} bytes, its header needs {expected}")
    return offset


class ObjectDiskPool(DiskPool):
    """A pool directory (`baldflow.data.ondisk`'s format) under an s3:// prefix."""

    def __init__(self, url: ObjectURL, meta: dict, files: dict[str, RemoteFile]) -> None:
        self.directory = url
        self.meta = meta
        self.x = self.y = None  # no memory maps of objects: rows are read by ranges
        self._set_layout(meta)
        self._x_fd, self._y_fd, self._ids_fd = files[X_FILE], files[Y_FILE], files[IDS_FILE]
        self._x_offset = _npy_offset(self._x_fd, self.dtype, self.shape)
        self._y_offset = _npy_offset(self._y_fd, np.dtype(np.int64), (self.count,))
        self._offsets = None
        self._index = None

    @classmethod
    def open(cls, url: str | ObjectURL) -> ObjectDiskPool:
        url = ObjectURL.parse(url)
        try:
            meta_file = RemoteFile.open(url / META_FILE)
        except ObjectNotFoundError as error:
            if object_store.exists(url / X_FILE):
                raise IncompletePoolError(
                    f"{url} has no {META_FILE}: the pool's writing did not finish; write it again"
                ) from None
            raise PoolNotFoundError(
                f"no pool at {url}: {error} (a pool in object storage is a prefix holding "
                f"{META_FILE}, {', '.join(DATA_FILES)}, or an uncompressed .npz object)"
            ) from None
        try:
            meta = json.loads(meta_file.read().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise PoolFormatError(f"{url / META_FILE} is not valid JSON: {error}") from error
        _check_meta(url / META_FILE, meta)
        files = {}
        missing = []
        for name in DATA_FILES:
            try:
                files[name] = RemoteFile.open(url / name)
            except ObjectNotFoundError:
                missing.append(name)
        if missing:
            raise IncompletePoolError(f"{url}: {', '.join(missing)} missing")
        return cls(url, meta, files)

    def __repr__(self) -> str:
        shown = f"shape={self.shape}, dtype={self.dtype.name}"
        return f"ObjectDiskPool({str(self.directory)!r}, {shown})"

    def __reduce__(self):
        return (ObjectDiskPool.open, (str(self.directory),))

    def close(self) -> None:
        """Nothing is held open: the client pools its connections."""

    def __del__(self) -> None:
        pass

    def labels_by_ids(self, ids) -> torch.Tensor:
        return RowPool.labels_by_ids(self, ids)

    def content_files(self) -> dict[str, dict]:
        return {name: object_store.content_entry(self.directory / name) for name in DATA_FILES}

    def file_stamps(self) -> dict:
        stamps = {
            name: object_store.stamp(self.directory / name) for name in (*DATA_FILES, META_FILE)
        }
        stamps["endpoint"] = object_store.endpoint_url()
        return stamps


class ObjectNpzPool(NpzPool):
    """An uncompressed .npz object read by row ranges (zip directory and .npy headers through
    the block cache, then the rows at their offsets)."""

    @classmethod
    def open(cls, url: str | ObjectURL) -> ObjectNpzPool:
        url = ObjectURL.parse(url)
        remote = RemoteFile.open(url)
        members = _npz_members(url, remote.reader())
        class_names = npz_class_names(url, members, remote.reader)
        return cls(url, members, class_names, fd=remote)

    def __repr__(self) -> str:
        return f"ObjectNpzPool({str(self.directory)!r}, shape={self.shape})"

    def __reduce__(self):
        return (ObjectNpzPool.open, (str(self.directory),))

    def content_files(self) -> dict[str, dict]:
        return {self.directory.name: object_store.content_entry(self.directory)}

    def file_stamps(self) -> dict:
        return {
            self.directory.name: object_store.stamp(self.directory),
            "endpoint": object_store.endpoint_url(),
        }
