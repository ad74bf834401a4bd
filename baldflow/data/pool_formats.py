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


# Bumped when a manifest's entries change what they hold (2: local files carry an MD5 too).
MANIFEST_LAYOUT = 2


def manifest(pool: RowPool | str | Path) -> dict:
    """A small description of a pool's exact content, for versioning (e.g. with DVC) and for
    checking that every worker scored the same pool: count, shape, dtype, scale, class names,
    each data file's size, sha256 and MD5, and one content hash over them (in the order the
    pool lists its files; the sha256s). A pool read in place also names its `source` format.
    Costs one streamed read of the files; a pool in object storage records only an object's MD5
    when its ETag is one (nothing read), and streams only the others for their sha256.
    `same_content` matches a pool's manifest against its copy's elsewhere."""
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


# The fields besides the files that two manifests of one pool share, wherever it is stored.
_SHAPE_FIELDS = ("format_version", "count", "shape", "dtype", "scale", "class_names", "source")


def same_content(recorded: dict, now: dict) -> bool:
    """Whether two manifests describe the same pool content, wherever each copy is stored.

    The combined hash decides when it matches. When it does not, the copies may still be one
    pool in two places: a pool in a bucket is described by its objects' MD5s (their ETags),
    its local copy by sha256s (and, since both are read at once, MD5s). Then each file must
    have the same size and agree on a hash that both entries carry; a file with no hash in
    common counts as changed (nothing is read to settle it)."""
    if recorded.get("sha256") == now.get("sha256"):
        return True
    if any(recorded.get(field) != now.get(field) for field in _SHAPE_FIELDS):
        return False
    old_files, new_files = recorded.get("files") or {}, now.get("files") or {}
    if not old_files or sorted(old_files) != sorted(new_files):
        return False
    for name, old in old_files.items():
        new = new_files[name]
        if old.get("bytes") != new.get("bytes"):
            return False
        shared = [kind for kind in ("sha256", "md5") if kind in old and kind in new]
        if not shared or any(old[kind] != new[kind] for kind in shared):
            return False
    return True


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
    # The key names the manifest's layout too: a cache written before local entries carried
    # their MD5 is not served as if it had one.
    layout = f"{MANIFEST_LAYOUT}:{pool.directory.resolve()}"
    key = hashlib.sha256(layout.encode()).hexdigest()[:32]
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
