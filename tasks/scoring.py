"""Tasks of sharded scoring: stage what the workers read, score one shard, rank the pool.

Staging writes the round's model (state_dict + spec, the registry's layout), the labeled ids
to leave out and, for a pool held in memory, the pool itself as a DiskPool, all under the
workspace's scratch directory (inside .git, so git never sees them). Workers get paths, never
tensors: a model by value would travel in every task's arguments. Every task here is safe to
run twice: files are replaced atomically with the same bytes, and scoring has no side effect
but its score file.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from baldflow import sharding, steps
from baldflow.config import Config
from baldflow.faults import fault_point

# Scratch space of a workspace's scoring passes: ignored by git without a .gitignore entry.
SCRATCH = Path(".git") / "baldflow"


def scratch_dir(workspace_root: str | Path) -> Path:
    return Path(workspace_root) / SCRATCH


def round_scratch(workspace_root: str | Path, campaign: str, round_index: int) -> Path:
    return scratch_dir(workspace_root) / "scoring" / campaign / f"round-{round_index:04d}"


@task(name="spill-pool", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=1)
def spill_pool(data: steps.CampaignData, workspace_root: str, campaign: str) -> str:
    """The directory of the pool as a DiskPool: the source's own for a pool on disk, else the
    in-memory pool written once (rewritten only when its content changed)."""
    if data.on_disk:
        return str(data.disk.pool_dir)
    from baldflow.data.disk_source import spill_pool as write_pool

    splits = data.splits
    directory = scratch_dir(workspace_root) / "pools" / campaign
    pool = write_pool(
        splits.pool_x, splits.pool_y, list(splits.pool_ids), list(splits.class_names), directory
    )
    pool.close()
    return str(directory)


@task(
    name="stage-scoring",
    task_run_name="stage scoring [round {round_index}]",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=1,
)
def stage_scoring(
    config: Config,
    trained: steps.Trained,
    labeled_ids: set[str],
    pool_dir: str,
    workspace_root: str,
    campaign: str,
    seed: int,
    round_index: int,
) -> sharding.ShardJob:
    """Write the round's model and labeled ids where the workers read them; the shard job."""
    scratch = round_scratch(workspace_root, campaign, round_index)
    # The previous rounds' scratch is of no use any more (their models are in MLflow).
    parent = scratch.parent
    if parent.is_dir():
        for old in parent.iterdir():
            if old.name != scratch.name:
                shutil.rmtree(old, ignore_errors=True)
    model_dir = sharding.save_model_dir(trained.model, scratch / "model")
    exclude = sharding.write_exclude_file(labeled_ids, scratch / "labeled-ids.txt")
    scores_dir = scratch / "scores"
    if scores_dir.is_dir():  # a retry: stale score files must not be merged
        shutil.rmtree(scores_dir)
    job = steps.shard_job(
        config, seed, model_dir=model_dir, pool_dir=pool_dir, exclude_file=exclude,
        scores_dir=scores_dir,
    )  # fmt: skip
    if not job.needs_ranks:  # only softrank's second pass reads the shards' scores back
        job = dataclasses.replace(job, scores_dir=None)
    fault_point("stage-scoring:after", round_index)
    return job


@task(
    name="score-shard",
    task_run_name="score shard [round {round_index}, rows {start}-{stop}]",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=1,
)
def score_shard(
    job: sharding.ShardJob, start: int, stop: int, round_index: int
) -> sharding.ShardResult:
    """Score rows [start, stop) where this task runs (a Dask worker): its summary only."""
    return sharding.score_shard(job, start, stop)


@task(
    name="rank-pool-scores",
    task_run_name="rank pool scores [round {round_index}]",
    cache_policy=NO_CACHE,
)
def rank_pool_scores(
    job: sharding.ShardJob, ranges: list[tuple[int, int]], round_index: int
) -> sharding.ShardJob:
    """Softrank's extra pass: the pool's sorted scores from the shards' score files, and the
    job of the second pass that reads them."""
    out = Path(job.scores_dir) / "sorted-scores.npy"
    sorted_file, _ = sharding.sorted_pool_scores_file(job.scores_dir, ranges, out)
    return dataclasses.replace(job, sorted_scores_file=str(sorted_file))


@task(
    name="score-pool-here",
    task_run_name="score pool in shards here [round {round_index}]",
    cache_policy=NO_CACHE,
)
def score_pool_here(
    job: sharding.ShardJob, ranges: list[tuple[int, int]], round_index: int
) -> tuple[list[sharding.ShardResult], str | None]:
    """The local runner on a pool on disk: the shards one after another in this process, read
    shard by shard (never the whole pool); both passes for softrank."""
    results = sharding.run_pass(job, ranges, sharding.local_submit)
    if not job.needs_ranks:
        return results, None
    out = Path(job.scores_dir) / "sorted-scores.npy"
    sorted_file, _ = sharding.sorted_pool_scores_file(job.scores_dir, ranges, out)
    ranked = dataclasses.replace(job, sorted_scores_file=str(sorted_file))
    return sharding.run_pass(ranked, ranges, sharding.local_submit), str(sorted_file)
