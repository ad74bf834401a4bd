"""The campaign pool protocol: a pool held in memory and the same pool streamed from disk answer
every member alike (rows, labels, ids, evaluation sets), the simulated oracle asks either, and
shard workers read either from `shard_path`."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from baldflow.data import CampaignPool, DataSplits, MemoryPool, StreamedPool, open_campaign_pool
from baldflow.data.disk_source import spill_pool
from baldflow.data.pool_formats import open_pool
from baldflow.labeling import OracleError, build_oracle

CLASSES = ["zero", "one", "two"]


def _splits(n: int = 60, shape=(1, 4, 4)) -> DataSplits:
    generator = torch.Generator().manual_seed(0)

    def part(rows: int, prefix: str):
        x = torch.randn(rows, *shape, generator=generator)
        y = torch.arange(rows) % len(CLASSES)
        return x, y, [f"{prefix}{i}" for i in range(rows)]

    pool_x, pool_y, pool_ids = part(n, "p")
    val_x, val_y, _ = part(9, "v")
    test_x, test_y, _ = part(12, "t")
    return DataSplits(pool_x, pool_y, pool_ids, val_x, val_y, test_x, test_y, list(CLASSES))


def _both(tmp_path: Path, splits: DataSplits) -> tuple[MemoryPool, StreamedPool]:
    """The splits as a pool in memory, and written to a disk source opened as a streamed pool."""
    root = tmp_path / "source"
    s = splits
    parts = {
        "pool": (s.pool_x, s.pool_y, s.pool_ids),
        "val": (s.val_x, s.val_y, [f"v{i}" for i in range(len(s.val_y))]),
        "test": (s.test_x, s.test_y, [f"t{i}" for i in range(len(s.test_y))]),
    }
    for part, (x, y, ids) in parts.items():
        spill_pool(x, y, ids, CLASSES, root / part).close()
    streamed = open_campaign_pool(
        "disk", root=root, repeat=1, noise_std=0.0, options={}, initial_per_class=2, seed=3
    )
    assert isinstance(streamed, StreamedPool)
    return MemoryPool(splits, ["p0", "p1", "p2"]), streamed


def test_both_pools_answer_every_member_alike(tmp_path):
    splits = _splits()
    memory, streamed = _both(tmp_path, splits)
    for pool in (memory, streamed):
        assert isinstance(pool, CampaignPool)
        assert pool.pool_size == 60 and pool.pool_ids == splits.pool_ids
        assert pool.class_names == CLASSES and pool.num_classes == 3
        assert pool.input_shape == (1, 4, 4)
    assert memory.streamed is False and memory.manifest is None
    assert streamed.streamed is True and streamed.manifest["count"] == 60
    assert len(streamed.initial_ids) == 2 * len(CLASSES)

    asked = ["p9", "p0", "p59", "p9"]
    for got in (memory.inputs(asked), streamed.inputs(asked)):
        assert got.dtype == torch.float32
        assert torch.equal(got, splits.pool_x[[9, 0, 59, 9]])
    for got in (memory.known_labels(asked), streamed.known_labels(asked)):
        assert got.dtype == torch.int64 and got.tolist() == [0, 0, 2, 0]
    labeled = {"p1", "p5", "nope"}
    unlabeled = [sid for sid in splits.pool_ids if sid not in labeled]
    assert memory.unlabeled_ids(labeled) == streamed.unlabeled_ids(labeled) == unlabeled
    for which in ("val", "test"):
        (mx, my), (sx, sy) = memory.evaluation_set(which), streamed.evaluation_set(which)
        assert torch.equal(mx, sx) and torch.equal(my, sy)
    for pool in (memory, streamed):
        with pytest.raises(KeyError, match="nope"):
            pool.inputs(["p1", "nope"])
        with pytest.raises(KeyError, match="nope"):
            pool.known_labels(["nope"])


def test_images_only_for_image_shaped_samples(tmp_path):
    memory, streamed = _both(tmp_path, _splits())
    for pool in (memory, streamed):
        assert torch.equal(pool.images(["p3"]), pool.inputs(["p3"]))
        assert pool.images([]) is None
    flat = MemoryPool(_splits(shape=(5,)), [])
    assert flat.images(["p3"]) is None


def test_shard_path_is_where_workers_read_the_same_rows(tmp_path):
    splits = _splits()
    memory, streamed = _both(tmp_path, splits)
    scratch = tmp_path / "scratch" / "pools" / "c"
    assert streamed.shard_path(scratch) == tmp_path / "source" / "pool"
    assert not scratch.exists()  # a pool on disk is read where it is
    assert memory.shard_path(scratch) == scratch
    for path in (memory.shard_path(scratch), streamed.shard_path(scratch)):
        with open_pool(path) as pool:
            assert pool.ids(0, pool.count) == splits.pool_ids
            assert torch.equal(pool.rows(0, pool.count), splits.pool_x)
            assert torch.equal(pool.labels(0, pool.count), splits.pool_y)


def test_simulated_oracle_asks_either_pool(tmp_path):
    splits = _splits()
    splits.pool_y[7] = -1  # a label the pool does not know
    memory, streamed = _both(tmp_path, splits)
    for pool in (memory, streamed):
        oracle = build_oracle("simulated", pool=pool)
        assert oracle.kind == "simulated"
        assert oracle.label(["p4", "p2", "p4"]) == [1, 2, 1]
        assert all(type(v) is int for v in oracle.label(["p4"]))
        assert oracle.labeled_by(["p4"]) == ["simulated oracle"]
        with pytest.raises(OracleError, match="no label for sample_id nope, gone"):
            oracle.label(["p1", "nope", "gone"])
        with pytest.raises(OracleError, match=r"sample_id p7: .* unknown \(-1\)"):
            oracle.label(["p1", "p7"])
        assert pickle.loads(pickle.dumps(oracle)).label(["p5"]) == [2]


def test_an_in_memory_source_opens_as_a_pool_in_memory():
    pool = open_campaign_pool(
        "digits", root=None, repeat=2, noise_std=0.1, options={}, initial_per_class=2, seed=0
    )
    assert isinstance(pool, MemoryPool) and not pool.streamed
    assert pool.pool_size == len(pool.splits.pool_ids) and len(pool.initial_ids) == 20
    assert set(pool.initial_ids) <= set(pool.pool_ids)
    initial_labels = pool.known_labels(pool.initial_ids).numpy()
    assert np.array_equal(np.bincount(initial_labels), [2] * 10)  # balanced by class
