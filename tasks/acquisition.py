"""Tasks: score the unlabeled pool, then select the batch to label."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from baldflow import steps
from baldflow.config import Config


@task(name="score-pool", task_run_name="score pool [round {round_index}]", cache_policy=NO_CACHE)
def score_pool(
    config: Config,
    data: steps.CampaignData,
    trained: steps.Trained,
    labeled_ids: set[str],
    seed: int,
    round_index: int,
) -> steps.PoolScores:
    return steps.score_pool(config, data, trained.model, labeled_ids, seed)


@task(
    name="select-batch", task_run_name="select batch [round {round_index}]", cache_policy=NO_CACHE
)
def select_batch(
    config: Config,
    data: steps.CampaignData,
    scored: steps.PoolScores,
    seed: int,
    round_index: int,
) -> steps.Selected:
    return steps.select_batch(config, data, scored, seed)
