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

from baldflow.compute import campaign_data, fitting, scoring, sharding
from baldflow.config import Config
from baldflow.faults import fault_point

# Scratch space of a workspace's scoring passes: ignored by git without a .gitignore entry.
SCRATCH = Path(".git") / "baldflow"


def scratch_dir(workspace_root: str | Path) -> Path:
    return Path(workspace_root) / SCRATCH


def round_scratch(workspace_root: str | Path, campaign: str, round_index: int) -> Path:
    return scratch_dir(workspace_root) / "scoring" / campaign / f"round-{round_index:04d}"


@task(name="spill-pool", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=1)
def spill_pool(data: campaign_data.CampaignData, workspace_root: str, campaign: str) -> str:
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
    trained: fitting.Trained,
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
    job = sharding.shard_job(
        config, seed, model_dir=model_dir, pool_dir=pool_dir, exclude_file=exclude,
        scores_dir=scores_dir,
    )  # fmt: skip
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
    return _ranked(job, ranges)


def _ranked(job: sharding.ShardJob, ranges: list[tuple[int, int]]) -> sharding.ShardJob:
    """The second softrank pass's job: the first pass's score files sorted into one file."""
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
    ranked = _ranked(job, ranges)
    return sharding.run_pass(ranked, ranges, sharding.local_submit), ranked.sorted_scores_file


@task(
    name="keep-pool-scores",
    task_run_name="keep pool scores [round {round_index}]",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=1,
)
def keep_pool_scores(
    config: Config,
    scored: scoring.PoolScores,
    workspace_root: str,
    campaign: str,
    seed: int,
    round_index: int,
) -> str | None:
    """Stage the round's score table (every scored sample's id, score and selection key) for
    its commit, which versions it with DVC beside the ledger; None when the strategy has no
    per-sample score (random, badge, coreset) or nothing was left to score. Written shard by
    shard for a sharded pool: the flow never holds N scores."""
    from baldflow.acquisition.picks import keys_by_id
    from baldflow.workspace.scores import ScoreTableWriter

    plan = scoring.scoring_plan(config, seed)
    if scored.remaining == 0 or plan.score is None:
        return None
    if scored.shard_files is None and (scored.scores_N is None or scored.sample_ids is None):
        return None
    keyed = plan.kind == "scored"  # joint and annealed picks have no one key per sample
    path = round_scratch(workspace_root, campaign, round_index) / "pool-scores.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)

    def keys(scores, ids):
        if not keyed:
            return None
        found = keys_by_id(
            scores, ids, plan.mode, plan.coldness, plan.selection_seed, scored.sorted_scores
        )
        return None if found is None else found.numpy()

    with ScoreTableWriter(path) as writer:
        if scored.shard_files is None:
            if scored.scores_N is None or scored.sample_ids is None:
                return None
            writer.write(
                scored.sample_ids, scored.scores_N.numpy(), keys(scored.scores_N, scored.sample_ids)
            )
        else:
            _write_shards(writer, scored.shard_files, keys)
    return str(path)


def _write_shards(writer, shard_files, keys) -> None:
    """One shard's rows at a time: ids from the pool, scores from the shard's score file
    (labeled samples, NaN there, are left out of the table)."""
    import numpy as np
    import torch

    from baldflow.data.ondisk import open_pool

    pool_dir, scores_dir, ranges = shard_files
    with open_pool(pool_dir) as pool:
        for start, stop in ranges:
            if stop == start:
                continue
            scores = np.load(sharding.scores_file(scores_dir, start, stop))
            ids = pool.ids(start, stop)
            scored_rows = ~np.isnan(scores)
            ids = [sid for sid, keep in zip(ids, scored_rows, strict=True) if keep]
            scores = scores[scored_rows]
            writer.write(ids, scores, keys(torch.from_numpy(scores), ids))
