"""Where a round scores its pool, chosen once per run: in process, in shards here, or in shards
on Dask workers through prefect-dask (`scoring_mode`).

The pool is scored in shards when `config.scores_in_shards` says so (`scale.runner: dask`, or
a pool on disk). With Dask, a subflow whose task runner is prefect-dask's
DaskTaskRunner runs one `score-shard` task per shard on the workers: a temporary LocalCluster
(`scale.workers` single-threaded processes, everything on 127.0.0.1) or the standing cluster at
`scale.dask_address`. Workers report their task runs to the Prefect API of PREFECT_API_URL: the
LocalCluster's workers inherit it; a standing cluster's workers need it in their environment.
Only summaries come back (a shard's best candidates and two numbers), never scores; the batch
is then exactly the one a single process would have picked (see baldflow.acquisition.picks).
"""

from __future__ import annotations

import abc
import os
import time
from typing import Any

from prefect import flow, get_run_logger

from baldflow import tasks
from baldflow.config import Config, scores_in_shards
from baldflow.rounds import CampaignRun
from baldflow.stack.prefect_server import PRIVATE_API_ENV
from baldflow.tasks import FeatureJob, PoolScores, ShardJob, ShardResult, Trained
from baldflow.tasks import features as feature_tasks
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
    import dask.config

    from baldflow.stack.dask_cluster import worker_pre_spawn_environ

    # The LocalCluster's nannies spawn their workers from this process's Dask config: without
    # MALLOC_TRIM_THRESHOLD_, as baldflow's standing clusters (stack/dask_cluster.py says why).
    dask.config.set({"distributed.nanny.pre-spawn-environ": worker_pre_spawn_environ()})
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
    job: ShardJob, ranges: list[tuple[int, int]], round_index: int, shards: int
) -> tuple[list[ShardResult], str | None]:
    """Every shard as a task on the flow's task runner (Dask workers); softrank twice."""
    results = scoring_tasks.score_shards_as_tasks(job, ranges, round_index)
    if not job.needs_ranks:
        return results, None
    ranked = scoring_tasks.rank_pool_scores(job, ranges, round_index)
    results = scoring_tasks.score_shards_as_tasks(ranked, ranges, round_index)
    return results, ranked.sorted_scores_file


@flow(
    name="baldflow-embed-pool",
    flow_run_name="embed pool [{shards} shards]",
    validate_parameters=False,
)
def embed_shards_flow(job: FeatureJob, ranges: list[tuple[int, int]], shards: int) -> list[str]:
    """A frozen backbone's features: every shard as a task on the flow's task runner."""
    return feature_tasks.embed_shards_as_tasks(job, ranges)


class Embedding:
    """A frozen backbone's features, computed once per pool and backbone where this mode runs
    its shards (`_embed`), then read as the campaign's pool (model.freeze: backbone)."""

    def frozen_features(self, config: Config, data: Any, root: str) -> Any:
        """The campaign's pool (`data`, a CampaignPool) with the backbone's cached features as
        the model's inputs."""
        started = time.perf_counter()
        raw_dir = scoring_tasks.spill_pool(data, root, config.campaign.name)
        job = tasks.plan_features(config, data, raw_dir, root)
        ranges = tasks.feature_ranges(job, shard_count(config, job.count))
        if not job.done:
            self._embed(config, job, ranges)
            tasks.finish_features(job, data, ranges)
        pool = tasks.open_features(job, data)
        get_run_logger().info(
            "frozen backbone %s: features %s of %d samples %s in %.1f s (cache %s)",
            job.backbone_hash[:12], list(job.feature_shape), job.count,
            "reused" if job.done else f"computed in {len(ranges)} shards",
            time.perf_counter() - started, job.key[:12],
        )  # fmt: skip
        return pool

    def _embed(self, config: Config, job: FeatureJob, ranges: list[tuple[int, int]]) -> None:
        tasks.embed_pool_here(job, ranges)


class ScoringHere(Embedding):
    """Where a round scores its pool: here, the whole in-memory pool in this process."""

    def score(
        self,
        c: CampaignRun,
        trained: Trained,
        labeled_ids: set[str],
        seed: int,
        round_index: int,
    ) -> PoolScores:
        return tasks.score_pool(c.config, c.data, trained, labeled_ids, seed, round_index)

    def release(self, c: CampaignRun, round_index: int) -> None:
        """Once the round's scores are kept: nothing was staged for workers here."""


class ScoringInShards(Embedding, abc.ABC):
    """The pool in shards, read where shard workers read it (a pool on disk's own files, or
    the in-memory pool spilled once per run); only summaries come back. Subclasses say where
    the shards run."""

    def __init__(self) -> None:
        self._pool_dir: str | None = None

    def score(
        self,
        c: CampaignRun,
        trained: Trained,
        labeled_ids: set[str],
        seed: int,
        round_index: int,
    ) -> PoolScores:
        config = c.config
        root = str(c.workspace.root)
        started = time.perf_counter()
        if self._pool_dir is None:
            self._pool_dir = scoring_tasks.spill_pool(c.data, root, c.name, config.scale.staging)
        job = scoring_tasks.stage_scoring(
            config, trained, labeled_ids, self._pool_dir, root, c.name, seed, round_index
        )
        ranges = scoring_tasks.shard_ranges(job, shard_count(config, c.data.pool_size))
        results, sorted_file = self._passes(config, job, ranges, round_index)
        scored = scoring_tasks.merge_shard_scores(
            config, c.data, trained, seed, results, sorted_file,
            time.perf_counter() - started, (job.pool_dir, job.scores_dir, ranges), round_index,
        )  # fmt: skip
        get_run_logger().info(
            "round %d: scored %d samples in %d shards (%s) in %.1f s",
            round_index, scored.remaining, len(ranges),
            config.scale.dask_address or f"{config.scale.runner}", scored.seconds,
        )  # fmt: skip
        return scored

    def release(self, c: CampaignRun, round_index: int) -> None:
        """Once the round's scores are kept: its objects staged in the store go."""
        if c.config.scale.staging is not None:
            scoring_tasks.release_staging(c.config, c.name, round_index)

    @abc.abstractmethod
    def _passes(
        self,
        config: Config,
        job: ShardJob,
        ranges: list[tuple[int, int]],
        round_index: int,
    ) -> tuple[list[ShardResult], str | None]:
        """Every shard's summary, and the sorted-scores file of softrank's second pass."""


class ShardsHere(ScoringInShards):
    """The shards one after another in this process (the local runner on a pool on disk)."""

    def _passes(self, config, job, ranges, round_index):
        return scoring_tasks.score_pool_here(job, ranges, round_index)


class ShardsOnDask(ScoringInShards):
    """Every shard a task on Dask workers, in a subflow with prefect-dask's task runner."""

    def _embed(self, config, job, ranges):
        warning = prefect_api_warning(config)
        if warning:
            get_run_logger().warning("%s", warning)
        embed_shards_flow.with_options(task_runner=dask_task_runner(config))(
            job, ranges, len(ranges)
        )

    def _passes(self, config, job, ranges, round_index):
        warning = prefect_api_warning(config)
        if warning:
            get_run_logger().warning("%s", warning)
        runner = dask_task_runner(config)
        return score_shards_flow.with_options(task_runner=runner)(
            job, ranges, round_index, len(ranges)
        )


def scoring_mode(config: Config) -> ScoringHere | ScoringInShards:
    """Where this run's rounds score their pool, chosen once at its start."""
    if not scores_in_shards(config):
        return ScoringHere()
    return ShardsOnDask() if config.scale.runner == "dask" else ShardsHere()
