"""Pools read in place from files users already have: an uncompressed .npz and an image folder.

Why: converting a million-image pool into a `DiskPool` directory doubles its disk space and
takes a pass of its own. Both formats here are read by row range, like a DiskPool, so the flow
never loads the pool and each Dask worker reads only its shard:

- `NpzPool`: a file written by ``np.savez`` (not ``savez_compressed``) holding ``x`` (or ``X``)
  [N, ...] uint8 or float32, ``y`` [N] integers (-1: unknown), optionally ``ids`` [N] (unicode
  or UTF-8 bytes; default the row number, as the in-memory npz source) and ``class_names``.
  A stored zip member is a plain .npy at a fixed offset of the file, so its rows are read with
  positioned reads at that offset: the array is memory-mapped in all but name (see
  `baldflow.data.ondisk` for why reads are positioned rather than through a map). A compressed
  member cannot be read by rows and is refused with the fix.
- `ImageFolderPool`: root/<class>/<image> (torchvision's ImageFolder layout, sub-folders of a
  class included). Ids are the paths relative to root, labels the class folder's index in the
  sorted class names; a row is decoded when it is read. The listing (about 100 bytes per image
  in memory) is made once per process and reused while the folders are unchanged. Every image
  is decoded to the first image's mode (grayscale or RGB) and must have its size.

Ids from these files are untrusted text: `RowPool.check_ids` refuses control and invisible
characters and duplicates, naming the rows; the disk source runs it when a campaign opens one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import threading
import zipfile
from pathlib import Path

import numpy as np
import torch
from numpy.lib import format as npy_format

from baldflow.common import file_entry, file_sha256, short_repr, text_problem
from baldflow.data.row_pool import (
    SUPPORTED_DTYPES,
    PoolFormatError,
    PoolNotFoundError,
    RowPool,
    pread_into,
)
from baldflow.data.sources import GRAYSCALE_MODES, IMAGE_SUFFIXES, npz_texts, open_image

X_KEYS = ("x", "X")
_ZIP_LOCAL_HEADER = struct.Struct("<4s5H3L2H")
_ZIP_LOCAL_MAGIC = b"PK\x03\x04"
_NPY_HEADER_READERS = {
    (1, 0): npy_format.read_array_header_1_0,
    (2, 0): npy_format.read_array_header_2_0,
}


def open_lazy_pool(path: str | Path) -> RowPool:
    """An .npz file as an `NpzPool`, a folder of class folders as an `ImageFolderPool`; anything
    else is refused with the formats that are read."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".npz":
        return NpzPool.open(path)
    if path.is_dir():
        return ImageFolderPool.open(path)
    what = "is not an .npz file" if path.exists() else "does not exist"
    raise PoolNotFoundError(
        f"pool {path} {what}; a pool is a baldflow pool directory (pool.json, x.npy, y.npy, "
        f"ids.txt), an uncompressed .npz file, or an image folder <root>/<class>/<image>"
    )


# ---------------------------------------------------------------------------------------------
# An uncompressed .npz.


class _Member:
    """One array of an .npz: where its data starts in the file, its dtype and shape."""

    def __init__(self, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        self.offset, self.dtype, self.shape = offset, dtype, shape
        self.row_bytes = dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))


def _npz_members(path, stream=None) -> dict[str, _Member]:
    """The arrays of an .npz by name (without ".npy"), each located in the file; refuses a
    compressed member, a Fortran-ordered one and an object array, naming it. `stream`: a
    seekable binary file to read instead of opening `path` (an object in a bucket)."""
    try:
        archive = zipfile.ZipFile(path if stream is None else stream)
    except (zipfile.BadZipFile, OSError) as error:
        raise PoolFormatError(f"{path} is not an .npz (zip) file: {error}") from error
    members = {}
    opened = open(path, "rb") if stream is None else contextlib.nullcontext(stream)  # noqa: SIM115
    with archive, opened as f:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            name = info.filename[: -len(".npy")]
            if info.compress_type != zipfile.ZIP_STORED:
                raise PoolFormatError(
                    f"{path}: array {name!r} is compressed (np.savez_compressed); a pool read "
                    f"by row ranges needs np.savez (uncompressed); re-save it with np.savez"
                )
            f.seek(info.header_offset)
            header = f.read(_ZIP_LOCAL_HEADER.size)
            fields = _ZIP_LOCAL_HEADER.unpack(header)
            if fields[0] != _ZIP_LOCAL_MAGIC:
                raise PoolFormatError(f"{path}: array {name!r} has a damaged zip entry")
            f.seek(info.header_offset + _ZIP_LOCAL_HEADER.size + fields[-2] + fields[-1])
            try:
                version = npy_format.read_magic(f)
                read_header = _NPY_HEADER_READERS.get(version)
                if read_header is None:
                    raise ValueError(f".npy format version {version} is not read here")
                shape, fortran, dtype = read_header(f)
            except ValueError as error:
                raise PoolFormatError(f"{path}: array {name!r} is not a .npy: {error}") from error
            if fortran and len(shape) > 1:
                raise PoolFormatError(f"{path}: array {name!r} is in Fortran order; re-save it")
            if dtype.hasobject:
                raise PoolFormatError(
                    f"{path}: array {name!r} holds Python objects; store ids as a unicode "
                    f"array (np.array(ids, dtype=str))"
                )
            members[name] = _Member(f.tell(), dtype, tuple(int(s) for s in shape))
    return members


class NpzPool(RowPool):
    """An uncompressed .npz read by row ranges (see the module's doc for its arrays)."""

    SOURCE_NAME = "npz"

    def __init__(
        self, path, members: dict[str, _Member], class_names: list[str] | None, fd=None
    ) -> None:
        x_key = next(key for key in X_KEYS if key in members)
        self._x, self._y, self._ids = members[x_key], members["y"], members.get("ids")
        stored = self._x.shape[1:]
        # [N, H, W] images get a channel axis, as the in-memory npz source gives them.
        sample_shape = (1, *stored) if len(stored) == 2 else stored
        self._describe(path, self._x.shape[0], sample_shape, self._x.dtype, class_names)
        # `fd`: what rows are read from when it is not a local file (an object in a bucket).
        self._fd = os.open(path, os.O_RDONLY) if fd is None else fd

    @classmethod
    def open(cls, path: str | Path) -> NpzPool:
        path = Path(path)
        if not path.is_file():
            raise PoolNotFoundError(f"npz pool {path} does not exist")
        members = _npz_members(path)
        return cls(path, members, npz_class_names(path, members, lambda: path))

    def __repr__(self) -> str:
        return f"NpzPool({str(self.directory)!r}, shape={self.shape}, dtype={self.dtype.name})"

    def __reduce__(self):
        return (NpzPool.open, (str(self.directory),))

    def close(self) -> None:
        fd = getattr(self, "_fd", -1)
        if isinstance(fd, int) and fd >= 0:
            os.close(fd)
        self._fd = -1

    def __del__(self) -> None:
        self.close()

    def _read(self, member: _Member, start: int, stop: int, shape) -> np.ndarray:
        out = np.empty((stop - start, *shape), dtype=member.dtype)
        pread_into(self._fd, out, member.offset + start * member.row_bytes)
        return out

    def raw_rows(self, start: int, stop: int) -> np.ndarray:
        start, stop = self._check_range(start, stop)
        return self._read(self._x, start, stop, self.sample_shape)

    def labels(self, start: int, stop: int) -> torch.Tensor:
        start, stop = self._check_range(start, stop)
        return torch.from_numpy(self._read(self._y, start, stop, ()).astype(np.int64))

    def ids(self, start: int, stop: int) -> list[str]:
        start, stop = self._check_range(start, stop)
        if self._ids is None:
            return [str(row) for row in range(start, stop)]
        values = self._read(self._ids, start, stop, ())
        return npz_texts(values, self.directory, "ids", first=start, error=PoolFormatError)

    def content_files(self) -> dict[str, dict]:
        return {self.directory.name: file_entry(self.directory)}

    def file_stamps(self) -> dict[str, list[int]]:
        stat = os.stat(self.directory)
        return {self.directory.name: [stat.st_size, stat.st_mtime_ns, stat.st_ino]}


def npz_class_names(path, members: dict[str, _Member], source) -> list[str] | None:
    """Check an .npz's arrays for a pool read in place (naming the fix), and return its class
    names (read whole from `source()`, a path or a seekable file: a few names)."""
    x_key = next((key for key in X_KEYS if key in members), None)
    if x_key is None or "y" not in members:
        raise PoolFormatError(
            f"{path} needs arrays x (or X) and y, found {sorted(members) or 'none'}"
        )
    x, y = members[x_key], members["y"]
    if x.dtype.name not in SUPPORTED_DTYPES or not x.dtype.isnative:
        raise PoolFormatError(
            f"{path}: {x_key} is {x.dtype}; a pool read in place stores uint8 or float32 "
            f"(native byte order); convert it (x.astype(np.float32))"
        )
    if len(x.shape) < 2:
        raise PoolFormatError(f"{path}: {x_key} has shape {list(x.shape)}, needs [N, ...]")
    if y.dtype.kind not in "iu" or y.shape != (x.shape[0],):
        raise PoolFormatError(
            f"{path}: y is {y.dtype}{list(y.shape)}, needs {x.shape[0]} integers (one per "
            f"row of {x_key}; -1: unknown)"
        )
    ids = members.get("ids")
    if ids is not None and (ids.dtype.kind not in "US" or ids.shape != (x.shape[0],)):
        raise PoolFormatError(
            f"{path}: ids is {ids.dtype}{list(ids.shape)}, needs {x.shape[0]} strings"
        )
    if "class_names" not in members:
        return None
    with np.load(source(), allow_pickle=False) as archive:  # a few names: read whole
        return npz_texts(archive["class_names"], path, "class_names", error=PoolFormatError)


# ---------------------------------------------------------------------------------------------
# An image folder.


class _Listing:
    """An image folder's sorted images: relative paths (the ids), class indexes, class names,
    and the folders it read with their mtimes (to tell whether it is still current)."""

    def __init__(self, ids, labels, class_names, folders: list[str], mtimes: list[int]):
        self.ids, self.labels, self.class_names = ids, labels, class_names
        self.folders, self.mtimes = folders, mtimes


_LISTINGS: dict[str, _Listing] = {}
_LISTINGS_LOCK = threading.Lock()


def _mtimes(root: Path, folders: list[str]) -> list[int] | None:
    """The mtimes of the listed folders, None when one is gone. Adding, removing or renaming an
    image or a sub-folder changes its folder's mtime, so one stat per folder (not one per image)
    tells whether a listing is current; a rewritten image of the same name changes no folder,
    and the manifest's per-image stamps cover that."""
    try:
        return [os.stat(root / folder).st_mtime_ns for folder in folders]
    except FileNotFoundError:
        return None


def _walk(root: Path, relative: str):
    """(folder relative to root, its mtime, its file names) for a folder and every folder under
    it. The mtime is read before the folder is: a change while listing makes the stamp stale,
    so the next open lists again rather than trusting a listing that missed it."""
    mtime = os.stat(root / relative).st_mtime_ns
    with os.scandir(root / relative) as entries:
        entries = list(entries)
    files = [entry.name for entry in entries if entry.is_file()]
    yield relative, mtime, files
    for sub in sorted(entry.name for entry in entries if entry.is_dir()):
        yield from _walk(root, f"{relative}/{sub}")


def _list_images(root: Path) -> _Listing:
    key = str(root.resolve())
    with _LISTINGS_LOCK:
        cached = _LISTINGS.get(key)
    if cached is not None and _mtimes(root, cached.folders) == cached.mtimes:
        return cached
    folders, mtimes = ["."], [os.stat(root).st_mtime_ns]
    class_names = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    ids: list[str] = []
    labels: list[int] = []
    for index, name in enumerate(class_names):
        problem = text_problem(name)
        if problem:
            raise PoolFormatError(f"{root}: the class folder {short_repr(name)} {problem}")
        found = []
        for relative, mtime, files in _walk(root, name):
            folders.append(relative)
            mtimes.append(mtime)
            found.extend(
                f"{relative}/{file}"
                for file in files
                if Path(file).suffix.lower() in IMAGE_SUFFIXES
            )
        found.sort()
        ids.extend(found)
        labels.extend([index] * len(found))
    if not ids:
        raise PoolNotFoundError(
            f"no images found under {root}/<class>/ (a pool directory needs pool.json; an image "
            f"folder holds one folder of images per class)"
        )
    listing = _Listing(ids, np.asarray(labels, dtype=np.int64), class_names, folders, mtimes)
    with _LISTINGS_LOCK:
        _LISTINGS[key] = listing
    return listing


class ImageFolderPool(RowPool):
    """An image folder read in place, a row decoded when it is read (see the module's doc)."""

    SOURCE_NAME = "image-folder"

    def __init__(self, root: Path, listing: _Listing, mode: str, size: tuple[int, int]):
        self._listing = listing
        self._mode = mode
        self._size = size  # (width, height), as PIL gives it
        channels = 1 if mode == "L" else 3
        sample_shape = (channels, size[1], size[0])
        self._describe(
            root, len(listing.ids), sample_shape, np.dtype(np.uint8), listing.class_names
        )

    @classmethod
    def open(cls, root: str | Path) -> ImageFolderPool:
        root = Path(root)
        if not root.is_dir():
            raise PoolNotFoundError(f"image folder {root} does not exist")
        listing = _list_images(root)
        first = root / listing.ids[0]
        with open_image(first, PoolFormatError) as image:
            mode = "L" if image.mode in GRAYSCALE_MODES else "RGB"
            size = image.size
        return cls(root, listing, mode, size)

    def __repr__(self) -> str:
        return f"ImageFolderPool({str(self.directory)!r}, shape={self.shape})"

    def __reduce__(self):
        return (ImageFolderPool.open, (str(self.directory),))

    def raw_rows(self, start: int, stop: int) -> np.ndarray:
        start, stop = self._check_range(start, stop)
        out = np.empty((stop - start, *self.sample_shape), dtype=np.uint8)
        for k, sample_id in enumerate(self._listing.ids[start:stop]):
            path = self.directory / sample_id
            with open_image(path, PoolFormatError) as image:
                picture = image.convert(self._mode)
            if picture.size != self._size:
                raise PoolFormatError(
                    f"{path} is {picture.size[0]}x{picture.size[1]} but the pool's images are "
                    f"{self._size[0]}x{self._size[1]} (from {self._listing.ids[0]}); resize "
                    f"the images to one size"
                )
            pixels = np.asarray(picture, dtype=np.uint8)
            out[k] = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        return out

    def labels(self, start: int, stop: int) -> torch.Tensor:
        start, stop = self._check_range(start, stop)
        return torch.from_numpy(self._listing.labels[start:stop].copy())

    def ids(self, start: int, stop: int) -> list[str]:
        start, stop = self._check_range(start, stop)
        return self._listing.ids[start:stop]

    def content_files(self) -> dict[str, dict]:
        """One entry for all images: a hash over each image's path and content hash, in row
        order (a manifest with a line per image would be as long as the pool)."""
        combined = hashlib.sha256()
        total = 0
        for sample_id in self._listing.ids:
            path = self.directory / sample_id
            total += path.stat().st_size
            combined.update(f"{sample_id}\0{file_sha256(path)}\n".encode())
        return {"images": {"count": self.count, "bytes": total, "sha256": combined.hexdigest()}}

    def file_stamps(self) -> dict[str, str]:
        """One hash over every image's path, size, mtime and inode (a stat per image)."""
        digest = hashlib.sha256()
        for sample_id in self._listing.ids:
            stat = os.stat(self.directory / sample_id)
            digest.update(
                f"{sample_id}\0{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ino}\n".encode()
            )
        return {"images": digest.hexdigest()}
