"""The disk source of a campaign (pool on disk, val/test in memory), spilling an in-memory pool
to disk, the DiskPool oracle, and make_pool's --campaign-source: all on real files."""

from __future__ import annotations

import os
import pickle
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from datafiles import load_benchmark, write_idx

from baldflow.acquisition.sharded import id_hashes
from baldflow.data import (
    DataNotFoundError,
    DataSourceError,
    DiskSourceError,
    DiskSourceLabelError,
    DiskSourceMismatchError,
    DiskSourceNotFoundError,
    SpillError,
    derived_seed,
    open_disk_source,
    spill_pool,
)
from baldflow.data.disk_source import SPILL_KEY_FILE, choose_initial_ids
from baldflow.data.ondisk import DiskPool, PoolWriter
from baldflow.labeling import DiskPoolOracle, OracleError

CLASSES = ["cat", "dog", "emu"]
SHAPE = (2, 3)


def _write(directory: Path, x, y, ids, class_names=CLASSES, dtype="float32") -> None:
    with PoolWriter(directory, x.shape[1:], dtype, len(ids), class_names=class_names) as w:
        w.write(x, y, ids)


def _data(n: int, seed: int, prefix: str, unknown: float = 0.0, shape=SHAPE):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *shape)).astype(np.float32)
    y = rng.integers(0, len(CLASSES), size=n).astype(np.int64)
    y[rng.random(n) < unknown] = -1
    return x, y, [f"{prefix}{i}" for i in range(n)]


def _make_source(root: Path, n: int = 300, order=None, **parts) -> dict:
    """A disk source with a pool of n rows (a fifth of the labels unknown), 20 val, 30 test rows;
    `order` writes the same pool rows in another order; `parts` replaces a part's arrays."""
    data = {
        "pool": _data(n, 0, "p", unknown=0.2),
        "val": _data(20, 1, "v"),
        "test": _data(30, 2, "t"),
    }
    data.update(parts)
    for part, (x, y, ids) in data.items():
        if part == "pool" and order is not None:
            x, y, ids = x[order], y[order], [ids[i] for i in order]
        _write(root / part, x, y, ids)
    return data


def _expected_initial(y, ids, per_class: int, seed: int) -> list[str]:
    """The whole pool at once, sorted in Python: what the streamed choice must equal."""
    known = [i for i in range(len(ids)) if y[i] >= 0]
    hashes = id_hashes(derived_seed(seed, "initial-labeled-set"), [ids[i] for i in known])
    ranked = sorted((int(y[i]), int(h), ids[i]) for i, h in zip(known, hashes, strict=True))
    out = []
    for c in range(len(CLASSES)):
        out += [sid for label, _, sid in ranked if label == c][:per_class]
    return out


def test_open_disk_source_loads_val_test_and_chooses_initial_ids(tmp_path):
    data = _make_source(tmp_path / "src")
    source = open_disk_source(tmp_path / "src", initial_per_class=4, seed=7)
    assert source.root == tmp_path / "src" and source.pool_dir == tmp_path / "src" / "pool"
    assert isinstance(source.pool, DiskPool) and source.count == 300 == len(source.pool)
    assert source.class_names == CLASSES and source.num_classes == 3
    assert source.input_shape == SHAPE
    for part in ("val", "test"):
        x, y = getattr(source, f"{part}_x"), getattr(source, f"{part}_y")
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert torch.equal(x, torch.from_numpy(data[part][0]))
        assert torch.equal(y, torch.from_numpy(data[part][1]))
    pool_x, pool_y, pool_ids = data["pool"]
    label_of = dict(zip(pool_ids, pool_y.tolist(), strict=True))
    chosen = source.initial_ids
    assert len(chosen) == len(set(chosen)) == 12
    assert [label_of[sid] for sid in chosen] == [0] * 4 + [1] * 4 + [2] * 4
    assert chosen == _expected_initial(pool_y, pool_ids, 4, seed=7)

    again = open_disk_source(tmp_path / "src", initial_per_class=4, seed=7)
    assert again.initial_ids == chosen
    other = open_disk_source(tmp_path / "src", initial_per_class=4, seed=8)
    assert other.initial_ids != chosen
    assert [label_of[sid] for sid in other.initial_ids] == [0] * 4 + [1] * 4 + [2] * 4

    # The same rows written in another order: the same ids, in the same order.
    order = np.random.default_rng(3).permutation(300)
    _make_source(tmp_path / "shuffled", order=order)
    shuffled = open_disk_source(tmp_path / "shuffled", initial_per_class=4, seed=7)
    assert shuffled.pool.ids(0, 3) != source.pool.ids(0, 3)
    assert shuffled.initial_ids == chosen
    # Streaming in small chunks (leaders merged across many chunks) changes nothing.
    for chunk_rows in (1, 7, 64):
        assert choose_initial_ids(source.pool, 4, 7, num_classes=3, chunk_rows=chunk_rows) == (
            chosen
        )
    assert open_disk_source(tmp_path / "src", initial_per_class=0, seed=7).initial_ids == []


def test_uint8_parts_are_scaled_to_floats(tmp_path):
    rng = np.random.default_rng(0)
    raw = {p: rng.integers(0, 256, size=(n, 1, 2, 2), dtype=np.uint8) for p, n in
           (("pool", 30), ("val", 5), ("test", 6))}  # fmt: skip
    for part, x in raw.items():
        y = np.arange(len(x)) % 3
        _write(tmp_path / part, x, y, [f"{part}{i}" for i in range(len(x))], dtype="uint8")
    source = open_disk_source(tmp_path, initial_per_class=2, seed=0)
    assert torch.allclose(source.val_x, torch.from_numpy(raw["val"].astype(np.float32) / 255))
    assert source.test_x.max() <= 1.0 and source.input_shape == (1, 2, 2)


def test_missing_root_or_part_says_which_and_how_to_build_one(tmp_path):
    with pytest.raises(DiskSourceNotFoundError) as caught:
        open_disk_source(tmp_path / "nowhere", initial_per_class=1, seed=0)
    message = str(caught.value)
    assert str(tmp_path / "nowhere") in message and "does not exist" in message
    assert "make_pool.py --campaign-source --out DIR" in message
    assert isinstance(caught.value, DataNotFoundError)
    assert isinstance(caught.value, FileNotFoundError)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DiskSourceNotFoundError, match="is not a directory"):
        open_disk_source(tmp_path / "file", initial_per_class=1, seed=0)

    for part in ("pool", "val", "test"):
        root = tmp_path / f"no-{part}"
        _make_source(root)
        os.rename(root / part, root / f"{part}.moved")
        with pytest.raises(DiskSourceNotFoundError, match=f"lacks {part}/") as caught:
            open_disk_source(root, initial_per_class=1, seed=0)
        assert str(root) in str(caught.value) and "--campaign-source" in str(caught.value)

    root = tmp_path / "half"
    _make_source(root)
    (root / "val" / "pool.json").unlink()  # a part whose writing did not finish
    with pytest.raises(DiskSourceError, match=r"val/ is not a usable pool.*pool\.json"):
        open_disk_source(root, initial_per_class=1, seed=0)


def test_parts_that_disagree_are_refused(tmp_path):
    wide = _data(20, 1, "v", shape=(3, 2))
    _make_source(tmp_path / "shape", val=wide)
    with pytest.raises(DiskSourceMismatchError, match=r"val/ has sample shape \(3, 2\)"):
        open_disk_source(tmp_path / "shape", initial_per_class=1, seed=0)

    root = tmp_path / "names"
    _make_source(root)
    x, y, ids = _data(30, 2, "t")
    _write(root / "test2", x, y, ids, class_names=["cat", "emu", "dog"])
    os.rename(root / "test", root / "test.old")
    os.rename(root / "test2", root / "test")
    with pytest.raises(DiskSourceMismatchError, match="test/ has class names") as caught:
        open_disk_source(root, initial_per_class=1, seed=0)
    assert str(root) in str(caught.value) and "'emu', 'dog'" in str(caught.value)

    root = tmp_path / "nameless"
    for part, n in (("pool", 30), ("val", 5), ("test", 5)):
        x, y, ids = _data(n, 0, part)
        _write(root / part, x, y, ids, class_names=None)
    with pytest.raises(DiskSourceMismatchError, match="pool/ has no class names"):
        open_disk_source(root, initial_per_class=1, seed=0)


def _set_label(part_dir: Path, row: int, label: int) -> None:
    """Edit a stored label behind PoolWriter's back (it refuses out-of-range labels)."""
    y = np.load(part_dir / "y.npy", mmap_mode="r+")
    y[row] = label
    y.flush()
    del y


@pytest.mark.parametrize("part", ["val", "test"])
def test_val_and_test_labels_must_be_known_and_in_range(tmp_path, part):
    x, y, ids = _data(20, 5, part[0])
    y[11] = -1
    root = tmp_path / "unknown"
    _make_source(root, **{part: (x, y, ids)})
    with pytest.raises(DiskSourceLabelError, match="row 11 label -1 is unknown") as caught:
        open_disk_source(root, initial_per_class=1, seed=0)
    assert str(root / part) in str(caught.value)

    root = tmp_path / "range"
    _make_source(root)
    _set_label(root / part, 4, 3)
    with pytest.raises(DiskSourceLabelError, match=r"row 4 label 3 is outside .*\[0, 3\)"):
        open_disk_source(root, initial_per_class=1, seed=0)


def test_pool_labels_out_of_range_and_too_few_per_class(tmp_path):
    root = tmp_path / "range"
    _make_source(root)
    _set_label(root / "pool", 250, 9)
    with pytest.raises(DiskSourceLabelError, match="row 250 label 9 is outside") as caught:
        open_disk_source(root, initial_per_class=1, seed=0)
    assert str(root / "pool") in str(caught.value)

    x, y, ids = _data(60, 4, "p")
    y[:] = np.arange(60) % 2  # no sample of class 2 ...
    y[7] = 2  # ... but one
    y[9] = -1
    root = tmp_path / "few"
    _make_source(root, pool=(x, y, ids))
    assert len(open_disk_source(root, initial_per_class=1, seed=0).initial_ids) == 3
    with pytest.raises(DiskSourceLabelError, match=r"class 2 \('emu': 1\) has fewer") as caught:
        open_disk_source(root, initial_per_class=2, seed=0)
    assert "needs 2 labelled pool samples per class" in str(caught.value)

    for bad in (-1, True, 1.5):
        with pytest.raises(DiskSourceError, match="initial_per_class"):
            open_disk_source(root, initial_per_class=bad, seed=0)
    assert issubclass(DiskSourceError, DataSourceError)


# ---------------------------------------------------------------------------------------------
# spill_pool


def _pool_tensors(n: int = 200, seed: int = 0):
    x, y, ids = _data(n, seed, "s", unknown=0.1)
    return torch.from_numpy(x), torch.from_numpy(y), ids


def _mtimes(directory: Path) -> dict[str, tuple[int, int]]:
    """Each file's (mtime, inode): a rewrite within one timestamp tick still makes new files
    (written into a temporary directory while the old ones exist, so with other inodes)."""
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in directory.iterdir()}


def test_spill_pool_round_trip_and_reuse(tmp_path):
    x, y, ids = _pool_tensors()
    target = tmp_path / "spilled"
    pool = spill_pool(x, y, ids, CLASSES, target)
    assert pool.directory == target and pool.scale == 1.0 and pool.class_names == CLASSES
    assert torch.equal(pool.rows(0, 200), x) and torch.equal(pool.labels(0, 200), y)
    assert pool.ids(0, 200) == ids
    assert (target / SPILL_KEY_FILE).read_text().strip().isalnum()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spilled"]  # no temporaries left

    before = _mtimes(target)
    time.sleep(0.02)
    again = spill_pool(x.clone(), y.clone(), list(ids), list(CLASSES), target)
    assert _mtimes(target) == before  # same content: opened, not rewritten
    assert torch.equal(again.rows(0, 200), x)

    changed = x.clone()
    changed[17, 1, 2] += 1.0
    rewritten = spill_pool(changed, y, ids, CLASSES, target)
    assert _mtimes(target) != before
    assert torch.equal(rewritten.rows(0, 200), changed)
    key = (target / SPILL_KEY_FILE).read_text()
    renamed = [*ids[:-1], "another"]
    assert spill_pool(changed, y, renamed, CLASSES, target).ids(199, 200) == ["another"]
    assert (target / SPILL_KEY_FILE).read_text() != key
    renamed_classes = spill_pool(changed, y, renamed, ["a", "b", "c"], target)
    assert renamed_classes.class_names == ["a", "b", "c"]
    # float64 input is stored as float32; the DiskPool pickles as its path.
    pool64 = spill_pool(x.double(), y, ids, CLASSES, tmp_path / "from64")
    assert torch.equal(pool64.rows(0, 200), x)
    assert len(pickle.dumps(pool64)) < 500
    assert torch.equal(pickle.loads(pickle.dumps(pool64)).rows(5, 9), x[5:9])


def test_spill_pool_survives_leftovers_and_refuses_foreign_directories(tmp_path):
    x, y, ids = _pool_tensors(50)
    target = tmp_path / "spilled"
    # A spill killed mid-write: a temporary sibling (of a pid that no longer exists) and an
    # old incomplete pool under the final name.
    dead = tmp_path / f".spilled.spill-{socket.gethostname()}-999999999-abc"
    (dead / "sub").mkdir(parents=True)
    (dead / "x.npy").write_bytes(b"half")
    live = tmp_path / f".spilled.spill-{socket.gethostname()}-{os.getpid()}-def"
    live.mkdir()
    target.mkdir()
    (target / "x.npy").write_bytes(b"partial")
    (target / SPILL_KEY_FILE).write_text("0" * 64 + "\n")
    pool = spill_pool(x, y, ids, CLASSES, target)
    assert torch.equal(pool.rows(0, 50), x)
    assert not dead.exists() and live.exists()  # only a dead process's leftovers are removed

    # A pool whose key matches but whose files were damaged is rewritten, not trusted.
    (target / "y.npy").write_bytes(b"garbage")
    assert torch.equal(spill_pool(x, y, ids, CLASSES, target).labels(0, 50), y)

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(SpillError, match=r"mine: it holds files that are not a pool's.*notes"):
        spill_pool(x, y, ids, CLASSES, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"

    # A refused pool (duplicate ids) leaves neither the final directory nor a temporary.
    with pytest.raises(SpillError, match="appears twice"):
        spill_pool(x, y, [*ids[:-1], ids[0]], CLASSES, tmp_path / "dup")
    assert not (tmp_path / "dup").exists()
    assert not list(tmp_path.glob(".dup.*"))
    with pytest.raises(SpillError, match="all must have N rows"):
        spill_pool(x, y[:10], ids, CLASSES, tmp_path / "short")
    with pytest.raises(SpillError, match="integer labels"):
        spill_pool(x, y.float(), ids, CLASSES, tmp_path / "floaty")


def test_concurrent_spills_of_the_same_pool_agree(tmp_path):
    x, y, ids = _pool_tensors(300)
    target = tmp_path / "shared"
    results, errors = [], []

    def spill():
        try:
            results.append(spill_pool(x, y, ids, CLASSES, target).rows(0, 300))
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=spill) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(results) == 4
    assert all(torch.equal(r, x) for r in results)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared"]


# ---------------------------------------------------------------------------------------------
# DiskPoolOracle


def test_disk_pool_oracle_labels_by_id_and_refuses_unknown(tmp_path):
    x, y, ids = _data(40, 0, "o")
    y[5] = -1
    _write(tmp_path / "pool", x, y, ids)
    oracle = DiskPoolOracle(DiskPool.open(tmp_path / "pool"))
    assert oracle.kind == "simulated"
    asked = ["o9", "o0", "o39", "o9"]
    assert oracle.label(asked) == [int(y[9]), int(y[0]), int(y[39]), int(y[9])]
    assert all(type(v) is int for v in oracle.label(asked))
    assert oracle.label([]) == []
    assert oracle.labeled_by(asked) == ["simulated oracle"] * 4

    with pytest.raises(OracleError, match="no label for sample_id nope, gone") as caught:
        oracle.label(["o1", "nope", "o2", "gone"])
    assert str(tmp_path / "pool") in str(caught.value)
    with pytest.raises(OracleError, match=r"sample_id o5: .* unknown \(-1\)"):
        oracle.label(["o1", "o5"])

    blob = pickle.dumps(oracle)
    assert len(blob) < 600  # the pool's path, not its labels
    copy = pickle.loads(blob)
    assert copy.label(["o3", "o4"]) == [int(y[3]), int(y[4])]
    assert "o1" not in repr(oracle)


# ---------------------------------------------------------------------------------------------
# benchmarks/make_pool.py --campaign-source


def test_build_source_synthetic_opens_as_a_disk_source(tmp_path, capsys):
    make_pool = load_benchmark("make_pool")
    result = make_pool.build_source(
        tmp_path / "src", 400, seed=2, val_count=50, test_count=60, synthetic=True
    )
    assert result["val"] == {"source": "synthetic", "count": 50}
    source = open_disk_source(tmp_path / "src", initial_per_class=3, seed=0)
    assert source.count == 400 and source.input_shape == (1, 28, 28)
    assert source.val_x.shape == (50, 1, 28, 28) and source.test_y.shape == (60,)
    assert source.class_names == [f"c{i}" for i in range(10)] and len(source.initial_ids) == 30
    assert DiskPool.open(tmp_path / "src" / "val").ids(0, 2) == ["val0", "val1"]
    assert DiskPool.open(tmp_path / "src" / "test").dtype == np.uint8
    # Same classes (prototypes) as the pool, other samples: every val sample is nearest to the
    # pool's mean of its own class (another seed would have made other classes).
    pool = source.pool
    pool_x, pool_y = pool.rows(0, 400), pool.labels(0, 400)
    means = torch.stack([pool_x[pool_y == c].mean(0) for c in range(10)]).flatten(1)
    nearest = torch.cdist(source.val_x.flatten(1), means).argmin(1)
    assert torch.equal(nearest, source.val_y)
    assert not torch.equal(source.val_x[:50], pool_x[:50])

    make_pool.main(
        ["--campaign-source", "--synthetic", "--count", "100", "--out", str(tmp_path / "cli")]
        + ["--val-count", "10", "--test-count", "12"]
    )
    assert "disk source for a campaign" in capsys.readouterr().out
    cli = open_disk_source(tmp_path / "cli", initial_per_class=1, seed=0)
    assert cli.count == 100 and cli.val_y.numel() == 10 and cli.test_y.numel() == 12


def test_build_source_from_fashion_mnist_uses_its_test_images(tmp_path):
    make_pool = load_benchmark("make_pool")
    rng = np.random.default_rng(0)
    fashion = tmp_path / "fashion"
    fashion.mkdir()
    write_idx(fashion / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (30, 28, 28)))
    write_idx(fashion / "train-labels-idx1-ubyte.gz", np.arange(30) % 10)
    test_images = rng.integers(0, 256, (25, 28, 28))
    test_labels = (np.arange(25) * 3) % 10
    write_idx(fashion / "t10k-images-idx3-ubyte.gz", test_images)
    write_idx(fashion / "t10k-labels-idx1-ubyte.gz", test_labels)
    result = make_pool.build_source(
        tmp_path / "src", 40, val_count=10, test_count=15, fashion=str(fashion)
    )
    assert "fashion-mnist" in result["source"] and "fashion-mnist" in result["test"]["source"]
    source = open_disk_source(tmp_path / "src", initial_per_class=1, seed=0)
    assert source.class_names[0] == "T-shirt/top"
    assert source.val_y.tolist() == test_labels[:10].tolist()
    assert source.test_y.tolist() == test_labels[10:].tolist()
    noisy = source.test_x[:, 0] * 255
    assert (noisy - torch.from_numpy(test_images[10:]).float()).abs().mean() < 40
    with pytest.raises(SystemExit, match="test set has 25 images"):
        make_pool.build_source(tmp_path / "big", 40, val_count=20, test_count=10,
                               fashion=str(fashion))  # fmt: skip
    assert not (tmp_path / "big").exists()  # refused before anything was written
