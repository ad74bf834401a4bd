"""Tasks of sharded scoring: stage what the workers read, score one shard, rank the pool.

Staging writes the round's model (state_dict + spec, the registry's layout), the labeled ids
to leave out and, for a pool held in memory, the pool itself as a DiskPool, all under the
workspace's scratch directory (inside .git, so git never sees them); with `scale.staging`, the
model, the ids and (for a pool not in a bucket) the pool go on to the object store by content
hash, and the shards' score files are written there (`baldflow.compute.staging`). Workers get
locations, never tensors: a model by value would travel in every task's arguments. Every task
here is safe to run twice: files are replaced atomically with the same bytes, and scoring has
no side effect but its score file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from baldflow.compute import fitting, scoring, sharding, staging
from baldflow.config import Config
from baldflow.data.pool import CampaignPool
from baldflow.tasks import stragglers
from baldflow.tasks.base import LOCAL_FILES, baldflow_task

# Scratch space of a workspace's scoring passes: ignored by git without a .gitignore entry.
SCRATCH = Path(".git") / "baldflow"


def scratch_dir(workspace_root: str | Path) -> Path:
    return Path(workspace_root) / SCRATCH


def round_scratch(workspace_root: str | Path, campaign: str, round_index: int) -> Path:
    return scratch_dir(workspace_root) / "scoring" / campaign / f"round-{round_index:04d}"


@baldflow_task("spill-pool", retry=LOCAL_FILES)
def spill_pool(
    data: CampaignPool, workspace_root: str, campaign: str, staging_base: str | None = None
) -> str:
    """Where shard workers read the pool: the source's own path or URL for a pool on disk or
    in a bucket, else the in-memory pool written once to the workspace's scratch (rewritten
    only when its content changed). With `staging_base` (scale.staging) a pool on this host's
    disk is uploaded there once, under its content hash, for workers that cannot read it."""
    where = data.shard_path(scratch_dir(workspace_root) / "pools" / campaign)
    if staging_base is None or staging.is_url(where):
        return str(where)
    return staging.stage_pool(where, staging_base)


@baldflow_task(
    "stage-scoring",
    run_name="stage scoring [round {round_index}]",
    retry=LOCAL_FILES,
    fault_after=True,
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
    """Write the round's model and labeled ids where the workers read them (the workspace's
    scratch, or by content hash under scale.staging); the shard job."""
    scratch = round_scratch(workspace_root, campaign, round_index)
    # The previous rounds' scratch is of no use any more (their models are in MLflow).
    _forget_other_rounds(scratch.parent, scratch.name)
    # The model is written here in both cases: staging uploads its files.
    model_dir = sharding.save_model_dir(trained.model, scratch / "model")
    base = config.scale.staging
    if base is None:
        where, model = str(scratch), str(model_dir)
        exclude = str(sharding.write_exclude_file(labeled_ids, scratch / "labeled-ids.txt"))
    else:
        _forget_other_rounds(staging.join(base, "scoring", campaign), scratch.name)
        where = staging.round_location(base, campaign, round_index)
        model = staging.stage_model_dir(model_dir, where)
        exclude = staging.stage_text(sharding.exclude_text(labeled_ids), where, "labeled")
    scores_dir = staging.join(where, "scores")
    staging.remove_tree(scores_dir)  # a retry: stale score files must not be merged
    return sharding.shard_job(
        config, seed, model_dir=model, pool_dir=pool_dir, exclude_file=exclude,
        scores_dir=scores_dir,
    )  # fmt: skip


def _forget_other_rounds(campaign_location: str | Path, keep: str) -> None:
    for name in staging.subfolders(campaign_location):
        if name != keep:
            staging.remove_tree(staging.join(campaign_location, name))


@baldflow_task(
    "release-staging", run_name="release staging [round {round_index}]", retry=LOCAL_FILES
)
def release_staging(config: Config, campaign: str, round_index: int) -> None:
    """The round's staged objects in the store, once its scores are kept: the model, the
    labeled ids, the score files. (The workspace's scratch is cleared by the next round, which
    also clears a round's staged objects that a dead flow left behind.)"""
    if config.scale.staging is not None:
        staging.remove_tree(staging.round_location(config.scale.staging, campaign, round_index))


@baldflow_task(
    "score-shard",
    run_name="score shard [round {round_index}, rows {start}-{stop}]",
    retry=LOCAL_FILES,
)
def score_shard(
    job: sharding.ShardJob, start: int, stop: int, round_index: int
) -> sharding.ShardResult:
    """Score rows [start, stop) where this task runs (a Dask worker): its summary only."""
    return sharding.score_shard(job, start, stop)


def shard_ranges(job: sharding.ShardJob, shards: int) -> list[tuple[int, int]]:
    """The row ranges of `shards` shards of the job's pool (fewer where the pool is small)."""
    return sharding.pool_ranges(job, shards)


def score_shards_as_tasks(
    job: sharding.ShardJob, ranges: list[tuple[int, int]], round_index: int
) -> list[sharding.ShardResult]:
    """One pass (BADGE's, or all of CoreSet's), each shard a `score-shard` task submitted to
    the running flow's task runner (Dask workers); `run_pass` checks that every shard answered
    and every row was covered."""

    def submit(function, ranges) -> list[sharding.ShardResult]:
        one = function.args[0]  # functools.partial(sharding.score_shard, job of this pass)
        return stragglers.gather(
            lambda start, stop: score_shard.submit(one, start, stop, round_index), ranges
        )

    return sharding.run_passes(job, ranges, submit)


@baldflow_task("rank-pool-scores", run_name="rank pool scores [round {round_index}]")
def rank_pool_scores(
    job: sharding.ShardJob, ranges: list[tuple[int, int]], round_index: int
) -> sharding.ShardJob:
    """Softrank's extra pass: the pool's sorted scores from the shards' score files, and the
    job of the second pass that reads them."""
    return _ranked(job, ranges)


def _ranked(job: sharding.ShardJob, ranges: list[tuple[int, int]]) -> sharding.ShardJob:
    """The second softrank pass's job: the first pass's score files sorted into one file."""
    out = staging.join(job.scores_dir, "sorted-scores.npy")
    sorted_file, _ = sharding.sorted_pool_scores_file(job.scores_dir, ranges, out)
    return dataclasses.replace(job, sorted_scores_file=str(sorted_file))


@baldflow_task("score-pool-here", run_name="score pool in shards here [round {round_index}]")
def score_pool_here(
    job: sharding.ShardJob, ranges: list[tuple[int, int]], round_index: int
) -> tuple[list[sharding.ShardResult], str | None]:
    """The local runner on a pool on disk: the shards one after another in this process, read
    shard by shard (never the whole pool); both passes for softrank, every pass for CoreSet."""
    results = sharding.run_passes(job, ranges, sharding.local_submit)
    if not job.needs_ranks:
        return results, None
    ranked = _ranked(job, ranges)
    return sharding.run_pass(ranked, ranges, sharding.local_submit), ranked.sorted_scores_file


# Its end is where the sharded pass ends, at the point the in-process score-pool task ends.
@baldflow_task(
    "merge-shard-scores",
    run_name="merge shard scores [round {round_index}]",
    fault_after="score-pool:after",
)
def merge_shard_scores(
    config: Config,
    data: CampaignPool,
    trained: fitting.Trained,
    seed: int,
    results: list[sharding.ShardResult],
    sorted_scores_file: str | None,
    seconds: float,
    shard_files: tuple[str, str, list[tuple[int, int]]],
    round_index: int,
) -> scoring.PoolScores:
    """The round's PoolScores from the shards' summaries (and BatchBALD's joint scoring of the
    merged preselection, which runs the model here)."""
    sorted_scores = None
    if sorted_scores_file is not None:
        import torch

        sorted_scores = torch.from_numpy(staging.read_array(sorted_scores_file))
    _warn_if_approximate(config, round_index)
    return scoring.sharded_pool_scores(
        config, data, trained.model, seed, results, sorted_scores, seconds, shard_files
    )


def _warn_if_approximate(config: Config, round_index: int) -> None:
    """A strategy whose batch in shards is not the one process's (BADGE) says so in the round's
    log, once a round: the docs give the gap, the log is where a team sees it happen."""
    from prefect import get_run_logger

    from baldflow.acquisition.strategies import get_strategy

    strategy = get_strategy(config.acquisition.strategy)
    if not strategy.exact_in_shards:
        get_run_logger().warning(
            "round %d: %s on a pool scored in shards draws from each shard's candidates, an "
            "approximation of its one-process batch that depends on the shard layout "
            "(docs/acquisition.md gives the measured gap)", round_index, strategy.name,
        )  # fmt: skip


@baldflow_task(
    "keep-pool-scores", run_name="keep pool scores [round {round_index}]", retry=LOCAL_FILES
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
    keyed = plan.keys_per_sample  # joint and one-at-a-time picks have no key per sample
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

    from baldflow.data.pool_formats import open_pool

    pool_dir, scores_dir, ranges = shard_files
    with open_pool(pool_dir) as pool:
        for start, stop in ranges:
            if stop == start:
                continue
            scores = staging.read_array(sharding.scores_file(scores_dir, start, stop))
            ids = pool.ids(start, stop)
            scored_rows = ~np.isnan(scores)
            ids = [sid for sid, keep in zip(ids, scored_rows, strict=True) if keep]
            scores = scores[scored_rows]
            writer.write(ids, scores, keys(torch.from_numpy(scores), ids))
