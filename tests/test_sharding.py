"""Sharded scoring of an on-disk pool (baldflow.compute.sharding) picks the batch one process picks.

The pool: 3,000 random 1x28x28 uint8 images written with PoolWriter; the model: the zoo's `cnn`
with random weights (seed 3), saved in the round-model layout. Every check compares against
`score_pool_single`, the whole pool scored in one `inference.score_pool` pass.
"""

from __future__ import annotations

import dataclasses
import os
import pickle

import numpy as np
import pytest
import torch

from baldflow.compute.sharding import (
    ShardingError,
    ShardJob,
    dask_submit,
    local_submit,
    save_model_dir,
    score_pool_sharded,
    score_pool_single,
    score_shard,
    shard_scores,
    single_pool_scores,
)
from baldflow.data.ondisk import DiskPool, PoolWriter
from baldflow.models import build_model

COUNT = 3000
MODES = ("power", "softmax", "topk", "random")
UNEVEN_7 = [(0, 1), (1, 400), (400, 401), (401, 1500), (1500, 1500), (1500, 2999), (2999, 3000)]


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> ShardJob:
    root = tmp_path_factory.mktemp("sharding")
    rng = np.random.default_rng(0)
    with PoolWriter(root / "pool", (1, 28, 28), "uint8", COUNT) as writer:
        for start in range(0, COUNT, 1000):
            x = rng.integers(0, 256, size=(1000, 1, 28, 28), dtype=np.uint8)
            y = rng.integers(0, 10, size=1000)
            writer.write(x, y, [f"s{i:05d}" for i in range(start, start + 1000)])
    model = build_model("cnn", (1, 28, 28), 10, seed=3)
    save_model_dir(model, root / "model")
    # chunk_size 64: shards start their chunks mid-chunk of the single pass, on purpose.
    return ShardJob(
        str(root / "model"),
        str(root / "pool"),
        score="bald",
        mc_samples=8,
        mask_seed=11,
        chunk_size=64,
        batch_size=10,
        selection_seed=5,
    )


@pytest.fixture(scope="module")
def reference(job) -> tuple[torch.Tensor, list[str]]:
    return single_pool_scores(job)


def test_shard_scores_equal_the_single_process_scores(job, reference):
    scores_N, ids_N = reference
    assert scores_N.dtype == torch.float64 and bool((scores_N > 0).all())
    worst = 0.0
    identical = True
    for start, stop in UNEVEN_7:
        scores_n, ids_n, _ = shard_scores(job, start, stop)
        assert ids_n == ids_N[start:stop]
        if stop > start:
            worst = max(worst, float((scores_n - scores_N[start:stop]).abs().max()))
        identical &= torch.equal(scores_n, scores_N[start:stop])
    print(f"shard scores vs single process: bit-identical={identical}, max |diff|={worst:.3g}")
    assert worst <= 1e-6


@pytest.mark.parametrize("mode", MODES)
def test_sharded_batch_equals_single_process(job, reference, mode):
    job = dataclasses.replace(job, mode=mode)
    expected = score_pool_single(job)
    assert len(expected) == job.batch_size
    for shards in (1, 3, UNEVEN_7):
        batch, stats = score_pool_sharded(job, shards, local_submit)
        assert batch == expected, (mode, shards)
        assert stats.rows == COUNT
        assert all(len(r.candidates) <= job.batch_size for r in stats.results)


def test_shard_result_carries_candidates_not_scores(job):
    first = score_shard(job, 0, 1000)
    again = score_shard(job, 1000, 2000)
    assert first.rows == 1000 and len(first.candidates) == job.batch_size
    assert not again.model_loaded  # the per-process cache: one load per model version
    assert first.peak_rss_mb > 0 and first.pid == os.getpid() and first.seconds > 0
    assert len(pickle.dumps(first)) < 4000  # b candidates, not 1000 scores
    assert pickle.loads(pickle.dumps(job)) == job


def test_model_rewritten_in_place_is_reloaded(job, tmp_path):
    save_model_dir(build_model("cnn", (1, 28, 28), 10, seed=3), tmp_path / "m")
    other = dataclasses.replace(job, model_dir=str(tmp_path / "m"))
    assert score_shard(other, 0, 10).model_loaded
    assert not score_shard(other, 0, 10).model_loaded
    save_model_dir(build_model("cnn", (1, 28, 28), 10, seed=4), tmp_path / "m")
    stamp = os.stat(tmp_path / "m" / "state_dict.pt").st_mtime_ns
    os.utime(tmp_path / "m" / "state_dict.pt", ns=(stamp + 10**9, stamp + 10**9))
    assert score_shard(other, 0, 10).model_loaded


def test_clear_errors(job):
    with pytest.raises(ShardingError, match="softrank"):
        dataclasses.replace(job, mode="softrank")
    with pytest.raises(ShardingError, match="unknown mode"):
        dataclasses.replace(job, mode="best")
    with pytest.raises(ShardingError, match="unknown score"):
        dataclasses.replace(job, score="nope")
    with pytest.raises(ShardingError, match="tile"):
        score_pool_sharded(job, [(0, 1000), (1200, 3000)])
    with pytest.raises(ShardingError, match="pool has 3000 rows"):
        score_pool_sharded(job, [(0, 1000)])
    with pytest.raises(ShardingError, match="needs state_dict.pt"):
        score_shard(dataclasses.replace(job, model_dir="/nonexistent"), 0, 10)


def test_through_a_real_dask_cluster(job, tmp_path):
    try:
        from distributed import Client

        from baldflow.stack.dask_cluster import DaskCluster
    except ImportError as error:
        if os.environ.get("CI"):
            raise RuntimeError(
                f"CI installs the dask extra; distributed is missing: {error}"
            ) from error
        pytest.skip(f"needs distributed: {error}")
    expected = score_pool_single(job)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cluster = DaskCluster(tmp_path / "dask", workers=2, threads_per_worker=1, env=env)
    try:
        cluster.start()
        with Client(cluster.address, timeout=30, set_as_default=False) as client:
            batch, stats = score_pool_sharded(job, 6, dask_submit(client))
        assert batch == expected
        assert len({r.pid for r in stats.results}) == 2  # both worker processes scored
        assert os.getpid() not in {r.pid for r in stats.results}
        assert DiskPool.open(job.pool_dir).count == COUNT
    finally:
        cluster.stop()
