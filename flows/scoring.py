"""Scoring a round's pool in shards: on Dask workers through prefect-dask, or here on disk.

`score_round_pool` is what a round calls when the pool is scored in shards (`scale.runner:
dask`, or a pool on disk). With Dask, a subflow whose task runner is prefect-dask's
DaskTaskRunner runs one `score-shard` task per shard on the workers: a temporary LocalCluster
(`scale.workers` single-threaded processes, everything on 127.0.0.1) or the standing cluster at
`scale.dask_address`. Workers report their task runs to the Prefect API of PREFECT_API_URL: the
LocalCluster's workers inherit it; a standing cluster's workers need it in their environment.
Only summaries come back (a shard's best candidates and two numbers), never scores; the batch
is then exactly the one a single process would have picked (see baldflow.acquisition.picks).
"""

from __future__ import annotations

import os
import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.utilities.annotations import quote

from baldflow.compute import fitting, scoring, sharding
from baldflow.config import Config
from baldflow.faults import fault_point
from baldflow.stack.prefect_server import PRIVATE_API_ENV
from baldflow.tasks import scoring as scoring_tasks

# Rows per shard for the local runner on disk: 262,144 28x28 images are 0.8 GB of float32.
LOCAL_SHARD_ROWS = 262_144
# Shards per Dask worker: enough that a slow worker does not hold up the pass for long.
SHARDS_PER_WORKER = 4


def shard_count(config: Config, rows: int) -> int:
    """scale.shards, else 4 per Dask worker, else one per LOCAL_SHARD_ROWS rows."""
    scale = config.scale
    if scale.shards is not None:
        return scale.shards
    if scale.runner == "dask":
        return SHARDS_PER_WORKER * scale.workers
    return max(1, -(-rows // LOCAL_SHARD_ROWS))


def dask_task_runner(config: Config) -> Any:
    """prefect-dask's DaskTaskRunner for the round: the standing cluster at scale.dask_address,
    else a temporary LocalCluster bound to 127.0.0.1 (its dashboards too, on free ports)."""
    import logging

    from prefect_dask import DaskTaskRunner

    # Dask's INFO lines (every nanny and comm opened and closed) would drown the round's log.
    for name in ("distributed", "distributed.nanny", "distributed.scheduler"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if config.scale.dask_address:
        return DaskTaskRunner(address=config.scale.dask_address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": config.scale.workers,
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": "127.0.0.1:0",
            "worker_dashboard_address": "127.0.0.1:0",
        },
    )


def prefect_api_warning(config: Config) -> str | None:
    """Why Dask workers may be slow or invisible to the team, or None when all is well."""
    api = os.environ.get("PREFECT_API_URL")
    if not api:
        return (
            "scale.runner is dask but no Prefect server is configured (PREFECT_API_URL): every "
            "Dask worker starts its own temporary Prefect server, which is several times "
            "slower; run `baldflow stack up` and use its PREFECT_API_URL"
        )
    if config.scale.dask_address and os.environ.get(PRIVATE_API_ENV) == api:
        return (
            f"scale.dask_address is a standing cluster but the Prefect API ({api}) is this "
            "command's temporary server: its workers cannot report to it unless they were "
            "started with this PREFECT_API_URL; use a persistent server (`baldflow stack up`)"
        )
    return None


@flow(
    name="baldflow-score-pool",
    flow_run_name="score pool [round {round_index}, {shards} shards]",
    validate_parameters=False,
)
def score_shards_flow(
    job: sharding.ShardJob, ranges: list[tuple[int, int]], round_index: int, shards: int
) -> tuple[list[sharding.ShardResult], str | None]:
    """Every shard as a task on the flow's task runner (Dask workers); softrank twice."""
    results = _pass(job, ranges, round_index)
    if not job.needs_ranks:
        return results, None
    ranked = scoring_tasks.rank_pool_scores(job, ranges, round_index)
    return _pass(ranked, ranges, round_index), ranked.sorted_scores_file


def _pass(job: sharding.ShardJob, ranges, round_index: int) -> list[sharding.ShardResult]:
    """One pass, each shard a `score-shard` task on the flow's task runner; run_pass checks
    that every shard answered and every row was covered."""

    def submit(_function, ranges) -> list[sharding.ShardResult]:
        futures = [
            scoring_tasks.score_shard.submit(job, start, stop, round_index)
            for start, stop in ranges
        ]
        return [future.result() for future in futures]

    return sharding.run_pass(job, ranges, submit)


def score_round_pool(
    c: Any,
    trained: fitting.Trained,
    labeled_ids: set[str],
    seed: int,
    round_index: int,
) -> scoring.PoolScores:
    """Score the round's pool in shards and return what the selection step needs."""
    import torch

    config = c.config
    logger = get_run_logger()
    started = time.perf_counter()
    if c.pool_dir is None:
        c.pool_dir = scoring_tasks.spill_pool(quote(c.data), str(c.workspace.root), c.name)
    job = scoring_tasks.stage_scoring(
        config, quote(trained), quote(labeled_ids), c.pool_dir, str(c.workspace.root), c.name,
        seed, round_index,
    )  # fmt: skip
    ranges = sharding.pool_ranges(job, shard_count(config, c.data.pool_size))
    if config.scale.runner == "dask":
        warning = prefect_api_warning(config)
        if warning:
            logger.warning("%s", warning)
        runner = dask_task_runner(config)
        results, sorted_file = score_shards_flow.with_options(task_runner=runner)(
            job, ranges, round_index, len(ranges)
        )
    else:
        results, sorted_file = scoring_tasks.score_pool_here(quote(job), ranges, round_index)
    sorted_scores = None
    if sorted_file is not None:
        import numpy as np

        sorted_scores = torch.from_numpy(np.load(sorted_file))
    scored = scoring.sharded_pool_scores(
        config, c.data, trained.model, seed, results, sorted_scores,
        time.perf_counter() - started, (job.pool_dir, job.scores_dir, ranges),
    )  # fmt: skip
    fault_point("score-pool:after", round_index)
    logger.info(
        "round %d: scored %d samples in %d shards (%s) in %.1f s",
        round_index, scored.remaining, len(ranges),
        config.scale.dask_address or f"{config.scale.runner}", scored.seconds,
    )  # fmt: skip
    return scored
