"""Any pool read by row ranges, opened by its path whatever its format, and its manifest.

The formats are siblings that build on `baldflow.data.row_pool.RowPool`: a pool directory
(`baldflow.data.ondisk.DiskPool`), an uncompressed .npz and an image folder read in place
(`baldflow.data.lazy_pools`). This module knows all of them; none of them knows another.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

from baldflow.data.lazy_pools import open_lazy_pool
from baldflow.data.object_pools import open_object_pool
from baldflow.data.object_store import is_url
from baldflow.data.ondisk import (
    FORMAT_VERSION,
    META_FILE,
    X_FILE,
    DiskPool,
    write_json_atomically,
)
from baldflow.data.row_pool import RowPool


def open_pool(path: str | Path) -> RowPool:
    """Open the pool at `path`, whatever its format: a `DiskPool` directory (it has a
    pool.json, or x.npy: an unfinished one is refused), an uncompressed `.npz` file, or an
    image folder (path/<class>/<image>) read in place (`baldflow.data.lazy_pools`); or an
    `s3://bucket/prefix` URL of a pool directory or an .npz (`baldflow.data.object_pools`)."""
    if is_url(path):
        return open_object_pool(path)
    path = Path(path)
    if path.is_dir() and ((path / META_FILE).exists() or (path / X_FILE).exists()):
        return DiskPool.open(path)
    return open_lazy_pool(path)


def manifest(pool: RowPool | str | Path) -> dict:
    """A small description of a pool's exact content, for versioning (e.g. with DVC) and for
    checking that every worker scored the same pool: count, shape, dtype, scale, class names,
    each data file's size and sha256, and one content hash over them (in the order the pool
    lists its files). A pool read in place also names its `source` format. Costs one streamed
    read of the files; a pool in object storage records an object's MD5 instead when its ETag
    is one (nothing read), and streams only the others."""
    if not isinstance(pool, RowPool):
        pool = open_pool(pool)
    files = pool.content_files()
    combined = hashlib.sha256()
    for name, entry in files.items():
        digest = entry["sha256"] if "sha256" in entry else f"md5:{entry['md5']}"
        combined.update(f"{name}\0{digest}\n".encode())
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
    write_json_atomically(Path(path), payload)
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
        write_json_atomically(
            path,
            {"directory": str(pool.directory.resolve()), "stamps": stamps, "manifest": payload},
        )
    return payload
