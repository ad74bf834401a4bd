"""Tasks of a frozen-backbone campaign (model.freeze: backbone): plan the features cache of the
pool and backbone, embed its shards (here or on Dask workers), assemble it, open the pool of
features. Every task is safe to run twice: a shard already written is kept, a finished cache
is reused, the assembly rewrites what an interrupted one left."""

from __future__ import annotations

from baldflow.compute import features
from baldflow.config import Config
from baldflow.data.pool import CampaignPool
from baldflow.tasks import stragglers
from baldflow.tasks.base import LOCAL_FILES, baldflow_task
from baldflow.tasks.scoring import scratch_dir


def features_root(workspace_root: str) -> str:
    """Where a workspace keeps features caches: beside its other scratch, out of git, shared
    by its campaigns (a cache is keyed by pool and backbone, not by campaign)."""
    return str(scratch_dir(workspace_root) / "features")


@baldflow_task("plan-features", retry=LOCAL_FILES)
def plan_features(
    config: Config, data: CampaignPool, raw_dir: str, workspace_root: str
) -> features.FeatureJob:
    return features.plan_features(config, data, raw_dir, features_root(workspace_root))


@baldflow_task("embed-shard", run_name="embed shard [rows {start}-{stop}]", retry=LOCAL_FILES)
def embed_shard(job: features.FeatureJob, start: int, stop: int) -> str:
    """Embed rows [start, stop) of the raw pool where this task runs (a Dask worker)."""
    return features.embed_shard(job, start, stop)


def embed_shards_as_tasks(job: features.FeatureJob, ranges: list[tuple[int, int]]) -> list[str]:
    """Every shard an `embed-shard` task on the running flow's task runner (Dask workers)."""
    return stragglers.gather(lambda start, stop: embed_shard.submit(job, start, stop), ranges)


@baldflow_task("embed-pool-here", run_name="embed the pool in shards here")
def embed_pool_here(job: features.FeatureJob, ranges: list[tuple[int, int]]) -> list[str]:
    """The shards one after another in this process (read shard by shard)."""
    return [features.embed_shard(job, start, stop) for start, stop in ranges]


@baldflow_task("finish-features", retry=LOCAL_FILES)
def finish_features(
    job: features.FeatureJob, data: CampaignPool, ranges: list[tuple[int, int]]
) -> str:
    return features.finish_features(job, data, ranges)


@baldflow_task("open-features", retry=LOCAL_FILES)
def open_features(job: features.FeatureJob, data: CampaignPool) -> CampaignPool:
    return features.open_features(job, data)


def feature_ranges(job: features.FeatureJob, shards: int) -> list[tuple[int, int]]:
    return features.shard_ranges(job.count, shards)
