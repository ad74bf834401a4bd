"""Where shard workers find a round's inputs and leave their outputs: a local directory, or an
object store prefix (`s3://bucket/prefix`, `scale.staging`).

Why: a worker on another machine (a rented cluster, a Kubernetes pod) shares no filesystem with
the flow. With `scale.staging` set, the round's model, the labeled ids it leaves out, EPIG's
target predictions and every shard's score file travel through the object store the pool is
read from; workers need only the package, the storage credentials and the scheduler's address.
Without it the same files are written under the workspace's scratch directory, which workers
must reach at the same path (one host, or a shared filesystem).

Every location is a string, a local path or an `s3://` URL, so a ShardJob pickles the same way
whichever it names. What a round stages once (the model, the labeled ids, a pool held in memory)
is addressed by a hash of its content: a retried staging writes the same key, and a worker
caches a downloaded model by that key without asking whether it changed. A round's staged
objects live under one prefix per round (`round_location`), removed when the round's scores
are kept and, should the flow die first, when the campaign's next round stages its own.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from baldflow.data import object_store
from baldflow.data.object_store import ObjectURL, is_url

# Downloaded models a worker keeps (each a round's network; a new round's replaces the oldest).
KEPT_MODELS = 4
# Hex digits of a content hash in a key: 64 bits, no collision among a campaign's rounds.
HASH_DIGITS = 16


def join(base: str | Path, *parts: str) -> str:
    """`base/part/...` for a local directory or an object store prefix."""
    if is_url(base):
        url = ObjectURL.parse(str(base))
        for part in parts:
            url = url / part
        return str(url)
    return str(Path(base).joinpath(*parts))


def round_location(base: str | Path, campaign: str, round_index: int) -> str:
    """The prefix (or directory) of one round's staged files."""
    return join(base, "scoring", campaign, f"round-{round_index:04d}")


def content_key(*blobs: bytes) -> str:
    digest = hashlib.sha256()
    for blob in blobs:
        digest.update(hashlib.sha256(blob).digest())
    return digest.hexdigest()[:HASH_DIGITS]


# ------------------------------------------------------------------------------ bytes and arrays
def write_bytes(location: str | Path, data: bytes) -> None:
    """`data` at `location`: one PUT to the store, or a local file replaced atomically (a
    retried or duplicated writer leaves the same bytes, a killed one no half file)."""
    if is_url(location):
        url = ObjectURL.parse(str(location))
        object_store.call(
            url,
            "writing",
            lambda: object_store.client().put_object(Bucket=url.bucket, Key=url.key, Body=data),
        )
        return
    path = Path(location)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(temporary, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def read_bytes(location: str | Path) -> bytes:
    """The whole file or object at `location` (staged files are small: a model, ids, scores)."""
    if is_url(location):
        url = ObjectURL.parse(str(location))
        return object_store.call(
            url,
            "reading",
            lambda: object_store.client().get_object(Bucket=url.bucket, Key=url.key)["Body"].read(),
        )
    return Path(location).read_bytes()


def write_array(location: str | Path, array) -> None:
    """A .npy of `array` at `location`."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array))
    write_bytes(location, buffer.getvalue())


def read_array(location: str | Path) -> np.ndarray:
    if is_url(location):
        return np.load(io.BytesIO(read_bytes(location)))
    return np.load(location)


def exists(location: str | Path) -> bool:
    if is_url(location):
        return object_store.exists(ObjectURL.parse(str(location)))
    return Path(location).exists()


def remove_tree(location: str | Path) -> None:
    """Everything under `location` (a directory, or every key under a prefix); nothing there is
    not an error, so a cleanup that runs twice is harmless."""
    if not is_url(location):
        shutil.rmtree(location, ignore_errors=True)
        return
    prefix = ObjectURL.parse(str(location))
    while True:
        keys = object_store.list_keys(prefix, limit=1000)
        if not keys:
            return
        for key in keys:
            with contextlib.suppress(object_store.ObjectNotFoundError):
                object_store.delete(prefix / key)


def subfolders(location: str | Path) -> list[str]:
    """The names one level below `location` (directories, or key prefixes)."""
    if is_url(location):
        names = {key.split("/", 1)[0] for key in object_store.list_keys(
            ObjectURL.parse(str(location)), limit=None) if "/" in key}  # fmt: skip
        return sorted(names)
    path = Path(location)
    return sorted(entry.name for entry in path.iterdir() if entry.is_dir()) if path.is_dir() else []


# ------------------------------------------------------------------------------------ staging
def stage_files(files: dict[str, bytes], base: str | Path, stem: str) -> str:
    """Write `files` (name: bytes) under `base/stem-<hash of their content>/` and return that
    location; the files are the same bytes whoever stages them, so a retry rewrites nothing
    that differs."""
    key = content_key(*(name.encode() + b"\0" + data for name, data in sorted(files.items())))
    where = join(base, f"{stem}-{key}")
    for name, data in files.items():
        write_bytes(join(where, name), data)
    return where


def stage_model_dir(model_dir: str | Path, base: str | Path) -> str:
    """A model directory (`sharding.save_model_dir`'s two files) staged under
    `base/model-<hash of their content>/`."""
    model_dir = Path(model_dir)
    files = {entry.name: entry.read_bytes() for entry in sorted(model_dir.iterdir())
             if entry.is_file()}  # fmt: skip
    return stage_files(files, base, "model")


def stage_text(text: str, base: str | Path, stem: str, suffix: str = ".txt") -> str:
    """`text` as `base/stem-<hash>.txt`: the same ids give the same key."""
    data = text.encode("utf-8")
    where = join(base, f"{stem}-{content_key(data)}{suffix}")
    write_bytes(where, data)
    return where


def stage_pool(pool_dir: str | Path, base: str | Path) -> str:
    """A pool directory on this host uploaded under `base/pools/<its content hash>/`, once:
    pool.json goes last, so a prefix holding it and its data files holds the whole pool, and a
    later round (or another campaign on the same pool) finds it there and uploads nothing.

    Each call first records the time in `base/pools/<hash>.last-used`, beside the pool, so that
    `prune_pools` never counts a pool that a round is uploading or about to score as unused."""
    from baldflow.data.ondisk import DATA_FILES, META_FILE
    from baldflow.data.pool_formats import cached_manifest, open_pool

    with open_pool(pool_dir) as pool:
        content = cached_manifest(pool)["sha256"][:HASH_DIGITS]
    where = ObjectURL.parse(join(base, POOLS_FOLDER, content))
    write_bytes(_last_used(str(where)), _now().isoformat().encode())
    # Every file, not only pool.json: a prune that raced an upload may have left a part.
    if all(object_store.exists(where / name) for name in (META_FILE, *DATA_FILES)):
        return str(where)
    with contextlib.suppress(object_store.ObjectNotFoundError):
        object_store.delete(where / META_FILE)  # what is left is an unfinished pool: rewritten
    if not (Path(pool_dir) / META_FILE).is_file():  # a format read in place: converted once
        from baldflow.data.convert import convert_pool

        convert_pool(pool_dir, str(where)).close()
        return str(where)
    for name in (*DATA_FILES, META_FILE):
        object_store.upload_file(Path(pool_dir) / name, where / name)
    return str(where)


def read_text(location: str | Path) -> str:
    return read_bytes(location).decode("utf-8")


# ------------------------------------------------------------------------- pools no round uses
POOLS_FOLDER = "pools"
# Beside a staged pool `pools/<hash>/`: `pools/<hash>.last-used`, when a round last staged it
# (ISO 8601, UTC). Beside, not inside: the pool's prefix holds the pool's files only.
LAST_USED = ".last-used"


def _last_used(pool_location: str) -> str:
    return pool_location.rstrip("/") + LAST_USED


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True)
class StagedPool:
    """One pool under `<staging>/pools/`: where, when a round last staged it (None: staged
    before uses were recorded, or its record is unreadable), whether its pool.json is there,
    and the bytes of its files."""

    location: str
    last_used: dt.datetime | None
    complete: bool
    bytes: int

    @property
    def content(self) -> str:
        return self.location.rstrip("/").rsplit("/", 1)[-1]


def _read_last_used(pool_location: str) -> dt.datetime | None:
    with contextlib.suppress(object_store.ObjectNotFoundError, ValueError):
        return dt.datetime.fromisoformat(read_text(_last_used(pool_location)).strip())
    return None


def staged_pools(base: str) -> list[StagedPool]:
    """The pools staged under `base` (an s3:// prefix: `scale.staging`), by content hash; a
    record of use whose pool has no file yet (an upload starting, or one that died) too."""
    from baldflow.data.ondisk import META_FILE

    folder = ObjectURL.parse(join(base, POOLS_FOLDER))
    keys = object_store.list_keys(folder, limit=None)
    contents = {key.split("/", 1)[0] for key in keys if "/" in key}
    contents |= {key[: -len(LAST_USED)] for key in keys
                 if "/" not in key and key.endswith(LAST_USED)}  # fmt: skip
    found = []
    for content in sorted(contents):
        where = folder / content
        size = 0
        for name in object_store.list_keys(where, limit=None):
            with contextlib.suppress(object_store.ObjectNotFoundError):
                size += object_store.head(where / name)[0]
        complete = object_store.exists(where / META_FILE)
        found.append(StagedPool(str(where), _read_last_used(str(where)), complete, size))
    return found


def prune_pools(base: str, unused_for: dt.timedelta, *, remove: bool = True) -> list[StagedPool]:
    """Remove (with `remove`) the pools staged under `base` that no round has staged for
    `unused_for`, and return them. A pool with no record of use counts as unused.

    A round records its use before it uploads or scores (`stage_pool`), and the record is read
    again just before a pool goes: a round that starts meanwhile keeps it. One that starts
    while it is being removed finds it incomplete and uploads it again."""
    from baldflow.data.ondisk import META_FILE

    cutoff = _now() - unused_for
    pruned = []
    for pool in staged_pools(base):
        if pool.last_used is not None and pool.last_used > cutoff:
            continue
        if remove:
            again = _read_last_used(pool.location)
            if again is not None and again > cutoff:
                continue
            # pool.json first: from then on a round that stages this pool uploads it again.
            with contextlib.suppress(object_store.ObjectNotFoundError):
                object_store.delete(ObjectURL.parse(join(pool.location, META_FILE)))
            remove_tree(pool.location)
            with contextlib.suppress(object_store.ObjectNotFoundError):
                object_store.delete(ObjectURL.parse(_last_used(pool.location)))
        pruned.append(pool)
    return pruned


# ------------------------------------------------------------------------- a worker's own copies
_DOWNLOADS_LOCK = threading.Lock()


def cache_root() -> Path:
    """A worker's own cache of staged models: BALDFLOW_STAGING_CACHE, else a folder of the
    user's in the temporary directory (a worker may have no writable HOME)."""
    configured = os.environ.get("BALDFLOW_STAGING_CACHE")
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"baldflow-staging-{os.getuid()}"


def local_model_dir(location: str | Path) -> Path:
    """A local directory holding the model staged at `location`: the directory itself when it
    is local, else a copy downloaded once into this worker's cache (the key is the content's
    hash, so a cached copy is never stale). Only the newest KEPT_MODELS copies are kept."""
    if not is_url(location):
        return Path(location)
    url = ObjectURL.parse(str(location))
    root = cache_root()
    target = root / "models" / url.name
    with _DOWNLOADS_LOCK:
        if target.is_dir():
            os.utime(target)
            return target
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = Path(tempfile.mkdtemp(prefix=f".{url.name}.", dir=target.parent))
        try:
            for name in object_store.list_keys(url):
                (partial / name).write_bytes(read_bytes(url / name))
            try:
                os.replace(partial, target)
            except OSError:
                if not target.is_dir():  # another worker process of this host won the race
                    raise
                shutil.rmtree(partial, ignore_errors=True)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        _forget_old_models(target.parent)
    return target


def _forget_old_models(folder: Path) -> None:
    copies = sorted(
        (entry for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith(".")),
        key=lambda entry: entry.stat().st_mtime_ns,
    )
    for old in copies[:-KEPT_MODELS]:
        shutil.rmtree(old, ignore_errors=True)
