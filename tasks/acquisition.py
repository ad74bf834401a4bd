"""Tasks: score the unlabeled pool, then select the batch to label (no side effects)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from baldflow.compute import campaign_data, evidence, fitting, scoring, selecting
from baldflow.config import Config
from baldflow.faults import fault_point


@task(name="score-pool", task_run_name="score pool [round {round_index}]", cache_policy=NO_CACHE)
def score_pool(
    config: Config,
    data: campaign_data.CampaignData,
    trained: fitting.Trained,
    labeled_ids: set[str],
    seed: int,
    round_index: int,
) -> scoring.PoolScores:
    scored = scoring.score_pool(config, data, trained.model, labeled_ids, seed)
    fault_point("score-pool:after", round_index)
    return scored


@task(
    name="select-batch", task_run_name="select batch [round {round_index}]", cache_policy=NO_CACHE
)
def select_batch(
    config: Config, scored: scoring.PoolScores, seed: int, round_index: int
) -> selecting.Selected:
    selected = selecting.select_batch(config, scored, seed)
    fault_point("select-batch:after", round_index)
    return selected


@task(
    name="assess-batch", task_run_name="assess batch [round {round_index}]", cache_policy=NO_CACHE
)
def assess_batch(
    config: Config,
    data: campaign_data.CampaignData,
    trained: fitting.Trained,
    labeled_ids: set[str],
    selected: selecting.Selected,
    seed: int,
    round_index: int,
    scored: scoring.PoolScores | None = None,
) -> dict[str, float]:
    """The batch's quality as a batch (and the shadow BatchBALD check): evidence, no effect."""
    return evidence.batch_evidence(
        config, data, trained.model, labeled_ids, selected, seed, scored=scored
    )
