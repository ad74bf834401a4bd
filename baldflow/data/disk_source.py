"""A campaign's data on disk: a pool read by row ranges plus small validation and test sets.

Why: a pool larger than memory cannot go through `DataSplits` (which holds every pool row in
every process). A disk source keeps the pool as a `DiskPool` that workers open by path and read
by row range; only validation and test, which every round evaluates in full, are loaded. The
initial labeled set is chosen by streaming the pool's labels and ids in chunks, so opening a
source costs O(chunk + classes * initial_per_class) memory whatever the pool's size.

The layout of a disk source directory ``<root>``:

- ``<root>/pool/``: the pool to acquire from (labels may be -1: unknown, never in the initial
  set, refused by the simulated oracle);
- ``<root>/val/``, ``<root>/test/``: fully labelled, same sample shape and class names.

Each part is a complete DiskPool directory (see `baldflow.data.ondisk`), an image folder
``<part>/<class>/<image>`` or an uncompressed ``<part>.npz`` (both read in place, see
`baldflow.data.lazy_pools`), opened by `baldflow.data.pool_formats.open_pool`. Build a
DiskPool source with ``python benchmarks/make_pool.py --campaign-source --out DIR``.

`spill_pool` goes the other way: it writes an in-memory pool to a DiskPool directory, so Dask
workers can read it by row range too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from baldflow.common import short_repr
from baldflow.data import object_store
from baldflow.data.object_store import ObjectURL, is_url
from baldflow.data.ondisk import (
    DATA_FILES,
    META_FILE,
    DiskPool,
    PoolWriter,
    fsync_path,
)
from baldflow.data.pool_formats import cached_manifest, open_pool
from baldflow.data.row_pool import UNKNOWN_LABEL, DiskPoolError, RowPool
from baldflow.data.splits import DataNotFoundError, DataSourceError, derived_seed
from baldflow.seeds import id_hashes

PARTS = ("pool", "val", "test")
BUILD_HINT = "build one with `python benchmarks/make_pool.py --campaign-source --out DIR`"
# The initial set is chosen from this many pool rows at a time (labels 8 B/row, ids ~10 B/row,
# hashes 8 B/row: a few MB per chunk).
INITIAL_CHUNK_ROWS = 1 << 16
# The same purpose string as `baldflow.data.repeat.prepare_pool`: the initial set's randomness
# is its own stream, independent of the rounds' selection noise, which also hashes ids.
INITIAL_PURPOSE = "initial-labeled-set"
# spill_pool's sidecar: the content key of the in-memory pool the directory was written from.
SPILL_KEY_FILE = "source.sha256"
SPILL_KEY_VERSION = "baldflow-spill/1"
# Rows handed to PoolWriter.write at a time when spilling (bounds the temporaries of a dtype
# conversion to one batch).
SPILL_BATCH_ROWS = 8192


# The name of this source in params.yaml (data.source), beside the in-memory SOURCES.
DISK_SOURCE = "disk"


class DiskSourceError(DataSourceError):
    """A disk source directory cannot be used as asked (its parts disagree, bad labels, ...)."""


class DiskSourceNotFoundError(DiskSourceError, DataNotFoundError):
    """The disk source's root, or one of its parts (pool, val, test), is not there."""


class DiskSourceMismatchError(DiskSourceError):
    """The parts of a disk source disagree: sample shapes or class names differ."""


class DiskSourceLabelError(DiskSourceError):
    """Labels that a campaign cannot use: unknown (-1) in val/test, outside the class names, or
    too few labelled pool samples of a class for the initial set."""


class SpillError(DiskSourceError):
    """An in-memory pool cannot be spilled to the directory asked for."""


@dataclass
class DiskSource:
    """An opened disk source: the pool stays on disk, val/test are in memory.

    `val_x`/`test_x` are float32 (stored values times the part's scale, as `DiskPool.rows`
    returns them), `val_y`/`test_y` int64. `initial_ids` are pool sample ids, by class then by
    keyed hash (see `choose_initial_ids`). `count` is the number of pool rows.
    """

    root: Path
    pool: RowPool
    pool_dir: Path
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_names: list[str]
    num_classes: int
    input_shape: tuple[int, ...]
    initial_ids: list[str]
    count: int
    # The manifests of val and test (`pool_formats.cached_manifest`): each round records them
    # beside the pool's, so that a campaign holds its held-out data to what it was.
    held_out: dict[str, dict]


def open_disk_source(root: str | Path, *, initial_per_class: int, seed: int) -> DiskSource:
    """Open the disk source at `root` and choose its initial labeled set.

    Checks that the three parts exist and are complete pools, that they share the sample shape
    and class names, and that val/test labels are all known and in range. Costs one streamed
    pass over the pool's labels and ids (for the initial set and the pool's label range), plus
    loading val and test. `root` may be an `s3://bucket/prefix` URL holding the same parts
    (pool directories or <part>.npz objects, `baldflow.data.object_pools`).
    """
    root = ObjectURL.parse(root) if is_url(root) else Path(root)
    if isinstance(initial_per_class, bool) or not isinstance(initial_per_class, int | np.integer):
        raise DiskSourceError(
            f"initial_per_class must be an integer >= 0, got {initial_per_class!r}"
        )
    if initial_per_class < 0:
        raise DiskSourceError(f"initial_per_class must be >= 0, got {initial_per_class}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise DiskSourceError(f"seed must be an integer, got {seed!r}")
    if isinstance(root, Path) and not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise DiskSourceNotFoundError(
            f"disk source {root} {what}; it must hold pool/, val/ and test/ pool directories; "
            f"{BUILD_HINT}"
        )
    missing = [part for part in PARTS if part_path(root, part) is None]
    if missing:
        raise DiskSourceNotFoundError(
            f"disk source {root} lacks {', '.join(f'{p}/' for p in missing)} (it must hold "
            f"pool/, val/ and test/: pool directories, image folders or <part>.npz files); "
            f"{BUILD_HINT}"
        )
    pools = {part: _open_part(root, part) for part in PARTS}
    pool = pools["pool"]
    class_names = _check_parts(root, pools)
    num_classes = len(class_names)
    held, held_out = {}, {}
    for part in ("val", "test"):
        part_pool = pools[part]
        x = part_pool.rows(0, part_pool.count)
        y = part_pool.labels(0, part_pool.count)
        _check_known_labels(root / part, y, num_classes)
        held[part] = (x, y)
        held_out[part] = cached_manifest(part_pool)
        part_pool.close()
    initial_ids = choose_initial_ids(pool, initial_per_class, seed, num_classes=num_classes)
    return DiskSource(
        root=root,
        pool=pool,
        pool_dir=pool.directory,
        val_x=held["val"][0],
        val_y=held["val"][1],
        test_x=held["test"][0],
        test_y=held["test"][1],
        class_names=class_names,
        num_classes=num_classes,
        input_shape=tuple(pool.sample_shape),
        initial_ids=initial_ids,
        count=pool.count,
        held_out=held_out,
    )


def part_path(root: Path | ObjectURL, part: str) -> Path | ObjectURL | None:
    """Where a part lives: <root>/<part>/ (a pool directory or an image folder), else
    <root>/<part>.npz; None when neither is there. Under an s3:// root: the prefix
    <root>/<part>/ when it holds pool.json (or x.npy: an unfinished pool, refused on opening),
    else the object <root>/<part>.npz."""
    if isinstance(root, ObjectURL):
        if any(object_store.exists(root / part / name) for name in (META_FILE, "x.npy")):
            return root / part
        return root / f"{part}.npz" if object_store.exists(root / f"{part}.npz") else None
    for path in (root / part, root / f"{part}.npz"):
        if path.is_dir() or (path.suffix == ".npz" and path.is_file()):
            return path
    return None


def _open_part(root: Path, part: str) -> RowPool:
    path = part_path(root, part)
    try:
        pool = open_pool(path)
        if not isinstance(pool, DiskPool):  # read in place: its ids were never checked
            pool.check_ids()
        return pool
    except DiskPoolError as error:
        raise DiskSourceError(
            f"disk source {root}: {_label(path)} is not a usable pool: {error}; {BUILD_HINT}"
        ) from error


def _check_parts(root: Path, pools: dict[str, RowPool]) -> list[str]:
    """The shared class names; refuses parts whose sample shapes or class names differ."""
    pool = pools["pool"]
    named = {part: _label(part_pool.directory) for part, part_pool in pools.items()}
    for part in ("val", "test"):
        if pools[part].sample_shape != pool.sample_shape:
            raise DiskSourceMismatchError(
                f"disk source {root}: {named[part]} has sample shape "
                f"{pools[part].sample_shape}, {named['pool']} has {pool.sample_shape}; all "
                f"parts must hold samples of one shape"
            )
    if not pool.class_names:
        raise DiskSourceMismatchError(
            f"disk source {root}: {named['pool']} has no class names; a campaign needs them (a "
            f"pool directory: PoolWriter(..., class_names=[...]) writes them to its "
            f"{META_FILE}; an .npz: a class_names array)"
        )
    for part in ("val", "test"):
        if pools[part].class_names != pool.class_names:
            raise DiskSourceMismatchError(
                f"disk source {root}: {named[part]} has class names "
                f"{short_repr(str(pools[part].class_names))}, {named['pool']} has "
                f"{short_repr(str(pool.class_names))}; all parts must use the same classes in "
                f"the same order"
            )
    return list(pool.class_names)


def _label(path: Path | ObjectURL) -> str:
    """How an error names a part: its folder with a slash, or its .npz file."""
    folder = path.is_dir() if isinstance(path, Path) else path.suffix.lower() != ".npz"
    return path.name + ("/" if folder else "")


def _check_known_labels(directory: Path, y: torch.Tensor, num_classes: int) -> None:
    """Validation and test score the model on every row: each needs a label in range."""
    bad = torch.nonzero((y < 0) | (y >= num_classes)).flatten()
    if bad.numel():
        row = int(bad[0])
        label = int(y[row])
        why = (
            "is unknown (-1); validation and test rows must all be labelled"
            if label == UNKNOWN_LABEL
            else f"is outside the {num_classes} class names [0, {num_classes})"
        )
        raise DiskSourceLabelError(
            f"{directory}: row {row} label {label} {why} ({bad.numel()} such rows)"
        )


def choose_initial_ids(
    pool: RowPool,
    per_class: int,
    seed: int,
    *,
    num_classes: int,
    chunk_rows: int = INITIAL_CHUNK_ROWS,
) -> list[str]:
    """`per_class` labelled pool ids of every class 0..num_classes-1: per class, the ids with the
    smallest keyed hash (`baldflow.seeds.id_hashes`, keyed by a seed derived from
    `seed`), ties broken by the id text. Ordered by class, then (hash, id).

    Why hashes: the choice is a uniformly random subset per class, reproducible from the seed,
    and it depends on each id alone, so writing the pool's rows in another order, or reading it
    in other chunks, chooses the same ids. Streaming keeps only the current leaders per class.
    Also refuses pool labels outside [-1, num_classes) and a class with fewer than `per_class`
    labelled samples (a silently unbalanced start would bias every round after it).
    """
    key = derived_seed(seed, INITIAL_PURPOSE)
    counts = np.zeros(num_classes, dtype=np.int64)
    # Per class: the current leaders as (hash, id), sorted, at most per_class of them.
    leaders: list[list[tuple[int, str]]] = [[] for _ in range(num_classes)]
    for start in range(0, pool.count, chunk_rows):
        stop = min(start + chunk_rows, pool.count)
        labels = pool.labels(start, stop).numpy()
        out_of_range = np.flatnonzero((labels < UNKNOWN_LABEL) | (labels >= num_classes))
        if out_of_range.size:
            row = int(out_of_range[0])
            raise DiskSourceLabelError(
                f"{pool.directory}: row {start + row} label {int(labels[row])} is outside the "
                f"{num_classes} class names [0, {num_classes}) (-1 marks an unknown label)"
            )
        known = np.flatnonzero(labels >= 0)
        counts += np.bincount(labels[known], minlength=num_classes)
        if per_class == 0 or known.size == 0:
            continue
        ids = pool.ids(start, stop)
        known_ids = [ids[i] for i in known.tolist()]
        hashes = id_hashes(key, known_ids)
        known_labels = labels[known]
        order = np.lexsort((hashes, known_labels))  # by class, then hash
        sorted_labels = known_labels[order]
        bounds = np.searchsorted(sorted_labels, np.arange(num_classes + 1))
        for c in range(num_classes):
            lo, hi = int(bounds[c]), int(bounds[c + 1])
            if lo == hi:
                continue
            group = order[lo:hi]
            # The chunk's per_class smallest hashes, plus any ties of the last one (the id
            # decides among equal hashes, so none of them may be dropped here).
            cut = min(per_class, group.size)
            limit = hashes[group[cut - 1]]
            while cut < group.size and hashes[group[cut]] == limit:
                cut += 1
            if len(leaders[c]) == per_class and int(hashes[group[0]]) > leaders[c][-1][0]:
                continue  # nothing in this chunk beats the current leaders
            merged = leaders[c] + [(int(hashes[i]), known_ids[i]) for i in group[:cut]]
            merged.sort()
            leaders[c] = merged[:per_class]
    short = [c for c in range(num_classes) if counts[c] < per_class]
    if short:
        names = pool.class_names or [str(c) for c in range(num_classes)]
        listed = ", ".join(
            f"{c} ({short_repr(str(names[c]))}: {int(counts[c])})" for c in short[:5]
        )
        raise DiskSourceLabelError(
            f"{pool.directory}: the initial set needs {per_class} labelled pool samples per "
            f"class; class {listed} {'has' if len(short) == 1 else 'have'} fewer"
            + (f" ({len(short)} classes in all)" if len(short) > 5 else "")
        )
    return [sample_id for group in leaders for _, sample_id in group]


# ---------------------------------------------------------------------------------------------
# Spilling an in-memory pool to disk.


def spill_key(x: torch.Tensor, y: torch.Tensor, ids: Sequence[str], class_names) -> str:
    """sha256 over the pool's content: sample shape, x's float32 bytes, y's int64 bytes, the
    ids and the class names (each length-prefixed or JSON, so no two pools share a key by
    concatenation). One streamed pass over x; no copy of it when it is already float32 on the
    CPU."""
    return _content_key(_float32_rows(x), _int64_labels(y), list(ids), class_names)


def _content_key(x_np: np.ndarray, y_np: np.ndarray, ids: list[str], class_names) -> str:
    digest = hashlib.sha256()
    digest.update(f"{SPILL_KEY_VERSION}\0{list(x_np.shape)}\0{list(y_np.shape)}\0".encode())
    flat = x_np.reshape(-1)
    step = max(1, (1 << 24) // max(1, flat.itemsize))
    for i in range(0, flat.size, step):
        digest.update(np.ascontiguousarray(flat[i : i + step]).view(np.uint8))
    digest.update(np.ascontiguousarray(y_np).view(np.uint8))
    digest.update(f"\0{len(ids)}\0".encode())
    digest.update("\n".join(str(i) for i in ids).encode("utf-8", "surrogatepass"))
    names = None if class_names is None else [str(c) for c in class_names]
    digest.update(b"\0" + json.dumps(names, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def spill_pool(
    x: torch.Tensor,
    y: torch.Tensor,
    ids: Sequence[str],
    class_names: Sequence[str] | None,
    directory: str | Path,
) -> DiskPool:
    """Write an in-memory pool (float32 rows, scale 1.0, int64 labels, -1 unknown) to
    `directory` as a DiskPool, so Dask workers can read it by row range; returns it opened.

    Safe to run twice, and by two processes at once: the directory carries the content key
    (`spill_key`) in ``source.sha256``; a complete pool with the same key is opened as it is,
    with no rewrite. Otherwise the pool is written into a fresh temporary sibling directory and
    renamed into place (an older pool with another key is moved aside and deleted), so a process
    killed mid-write leaves at most a temporary directory, never half a pool under the final
    name. Temporaries left by dead processes of this host are removed on the next spill.
    A directory holding anything but a pool is refused, never deleted.
    """
    directory = Path(directory)
    x_np = _float32_rows(x)
    y_np = _int64_labels(y)
    ids = list(ids)
    if x_np.ndim < 2 or y_np.shape != (x_np.shape[0],) or len(ids) != x_np.shape[0]:
        raise SpillError(
            f"cannot spill to {directory}: x has shape {tuple(x_np.shape)} (need [N, ...]), "
            f"y has shape {tuple(y_np.shape)}, {len(ids)} ids; all must have N rows"
        )
    key = _content_key(x_np, y_np, ids, class_names)
    current = _open_if_current(directory, key)
    if current is not None:
        return current
    _check_replaceable(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temporaries(directory)
    tmp = directory.parent / f"{_temp_prefix(directory)}{socket.gethostname()}-{os.getpid()}-"
    tmp = tmp.with_name(tmp.name + uuid.uuid4().hex[:12])
    try:
        try:
            with PoolWriter(
                tmp,
                tuple(x_np.shape[1:]),
                "float32",
                int(x_np.shape[0]),
                class_names=class_names,
                scale=1.0,
            ) as writer:
                for start in range(0, x_np.shape[0], SPILL_BATCH_ROWS):
                    stop = start + SPILL_BATCH_ROWS
                    writer.write(x_np[start:stop], y_np[start:stop], ids[start:stop])
        except DiskPoolError as error:
            raise SpillError(f"cannot spill the pool to {directory}: {error}") from error
        # The key goes in before the rename: whoever sees the directory sees its key.
        with open(tmp / SPILL_KEY_FILE, "w", encoding="ascii") as f:
            f.write(key + "\n")
            f.flush()
            os.fsync(f.fileno())
        fsync_path(tmp)
        _install(tmp, directory, key)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return DiskPool.open(directory)


def _float32_rows(x) -> np.ndarray:
    if not isinstance(x, torch.Tensor):
        raise SpillError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise SpillError(f"x must hold floats (it is spilled as float32), got {x.dtype}")
    return x.detach().to("cpu", torch.float32).contiguous().numpy()


def _int64_labels(y) -> np.ndarray:
    if not isinstance(y, torch.Tensor):
        raise SpillError(f"y must be a torch.Tensor, got {type(y).__name__}")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise SpillError(f"y must hold integer labels, got {y.dtype}")
    return y.detach().to("cpu", torch.int64).contiguous().numpy()


def _read_key(directory: Path) -> str | None:
    try:
        return (directory / SPILL_KEY_FILE).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _open_if_current(directory: Path, key: str) -> DiskPool | None:
    """The pool in `directory` when it is complete and was spilled from the same content."""
    if _read_key(directory) != key or not (directory / META_FILE).is_file():
        return None
    try:
        return DiskPool.open(directory)
    except DiskPoolError:
        return None  # damaged: rewrite it


_POOL_NAMES = {*DATA_FILES, META_FILE, SPILL_KEY_FILE}


def _check_replaceable(directory: Path) -> None:
    """Only a pool (complete or not) or an empty directory may be replaced: `directory` may be
    a mistyped path to someone's data."""
    if not directory.exists():
        return
    if not directory.is_dir():
        raise SpillError(f"cannot spill the pool to {directory}: it is a file, not a directory")
    others = sorted(
        p.name
        for p in directory.iterdir()
        if p.name not in _POOL_NAMES and not p.name.startswith(f".{META_FILE}.tmp-")
    )
    if others:
        raise SpillError(
            f"cannot spill the pool to {directory}: it holds files that are not a pool's "
            f"({', '.join(short_repr(n) for n in others[:5])}); choose another directory or "
            f"empty it"
        )


def _temp_prefix(directory: Path) -> str:
    return f".{directory.name}.spill-"


def _remove_dead_temporaries(directory: Path) -> None:
    """Delete temporary siblings left by killed spills of this host (their pid is gone); those
    of live processes, or of other hosts sharing the filesystem, are left alone."""
    prefix = f"{_temp_prefix(directory)}{socket.gethostname()}-"
    for candidate in directory.parent.glob(f"{_temp_prefix(directory)}*"):
        if not candidate.name.startswith(prefix):
            continue
        pid_text = candidate.name[len(prefix) :].split("-", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            shutil.rmtree(candidate, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True  # it exists, under another user
    except (ProcessLookupError, OverflowError, OSError):
        return False
    return True


def _install(tmp: Path, directory: Path, key: str) -> None:
    """Rename the finished `tmp` to `directory`. rename(2) replaces only an absent or empty
    directory, so an existing pool is first moved aside under a temporary name; if another
    process installed the same content meanwhile, its pool is kept and `tmp` dropped."""
    for _ in range(5):
        try:
            os.rename(tmp, directory)
            fsync_path(directory.parent)
            return
        except OSError:
            if not directory.exists():
                raise
        if _open_if_current(directory, key) is not None:
            return
        _check_replaceable(directory)
        aside = directory.parent / (
            f"{_temp_prefix(directory)}{socket.gethostname()}-{os.getpid()}-old-"
            f"{uuid.uuid4().hex[:12]}"
        )
        with contextlib.suppress(FileNotFoundError):
            os.rename(directory, aside)
            shutil.rmtree(aside, ignore_errors=True)
    raise SpillError(
        f"cannot spill the pool to {directory}: other processes keep replacing it with other "
        f"content"
    )
