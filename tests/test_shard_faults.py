"""Faults of sharded scoring on a real Dask cluster: a worker that dies in the middle of a
shard. Dask's nanny starts a new worker, the scheduler runs the shard again, and the round's
batch is the one a single process selects."""

from __future__ import annotations

import os
import signal

from distributed import Client
from helpers import trained_round_one

from baldflow.compute import scoring, selecting, sharding
from baldflow.stack.dask_cluster import DaskCluster


def test_a_worker_killed_mid_shard_is_replaced_and_the_batch_is_unchanged(
    tmp_path, tiny_params
):
    config, data, trained, labeled_ids, seed = trained_round_one(
        tiny_params, tmp_path, also_labeled=(7, 150)
    )
    single = scoring.score_pool(config, data, trained.model, labeled_ids, seed)
    expected = selecting.select_batch(config, single, seed)

    job = sharding.shard_job(
        config, seed, model_dir=tmp_path / "model", pool_dir=tmp_path / "pool",
        exclude_file=tmp_path / "labeled.txt", scores_dir=tmp_path / "scores",
    )  # fmt: skip
    count = data.pool_size
    ranges = sharding.pool_ranges(job, [(0, count // 3), (count // 3, 2 * count // 3),
                                        (2 * count // 3, count)])  # fmt: skip
    victim = ranges[1][0]
    marker = tmp_path / "killed-once"

    with DaskCluster(tmp_path / "dask", workers=2) as cluster, Client(
        cluster.address, timeout=30, set_as_default=False
    ) as client:
        on_dask = sharding.dask_submit(client)

        def dying_submit(function, shard_ranges):
            def shard(start: int, stop: int):  # on a worker: its first try of one shard dies
                if start == victim and not marker.exists():
                    marker.write_text(str(os.getpid()))
                    os.kill(os.getpid(), signal.SIGKILL)
                return function(start, stop)

            return on_dask(shard, shard_ranges)

        results = sharding.run_pass(job, ranges, dying_submit)

    killed = int(marker.read_text())
    assert killed not in {result.pid for result in results}, "the shard ran again elsewhere"
    sharded = scoring.sharded_pool_scores(config, data, trained.model, seed, results, None, 0.0)
    got = selecting.select_batch(config, sharded, seed)
    assert got.sample_ids == expected.sample_ids
    assert got.scores == expected.scores


def test_a_shard_whose_task_never_answers_gets_a_second_copy(
    tmp_path, prefect_harness, monkeypatch
):
    """A shard task that hangs (a lost Dask task, a straggling node) does not hold the pass
    forever: once the other shards are done and it has run well past their median, a second
    copy runs on another worker and its result is taken."""
    import time

    from prefect import flow, task
    from prefect_dask import DaskTaskRunner

    from baldflow.tasks import stragglers

    monkeypatch.setattr(stragglers, "BACKUP_MIN_S", 2.0)
    marks = tmp_path / "marks"
    marks.mkdir()

    # Defined here, so that it travels to the workers by value.
    @task
    def shard(index: int) -> int:
        first = not (marks / f"{index}").exists()
        (marks / f"{index}").touch()
        if index == 2 and first:
            time.sleep(300)  # the first copy of shard 2 never answers
        return index * 10

    env = {**os.environ, "PREFECT_API_URL": prefect_harness}
    with DaskCluster(tmp_path / "dask", workers=2, threads_per_worker=1, env=env) as cluster:

        @flow(task_runner=DaskTaskRunner(address=cluster.address))
        def one_pass() -> list[int]:
            ranges = [(index, index + 1) for index in range(4)]
            return stragglers.gather(lambda start, stop: shard.submit(start), ranges)

        started = time.monotonic()
        assert one_pass() == [0, 10, 20, 30]
        assert time.monotonic() - started < 120
