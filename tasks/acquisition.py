"""Tasks: score the unlabeled pool, then select the batch to label (no side effects)."""

from __future__ import annotations

from baldflow.compute import evidence, fitting, scoring, selecting
from baldflow.config import Config
from baldflow.data.pool import CampaignPool
from baldflow.tasks.base import baldflow_task


@baldflow_task("score-pool", run_name="score pool [round {round_index}]", fault_after=True)
def score_pool(
    config: Config,
    data: CampaignPool,
    trained: fitting.Trained,
    labeled_ids: set[str],
    seed: int,
    round_index: int,
) -> scoring.PoolScores:
    return scoring.score_pool(config, data, trained.model, labeled_ids, seed)


@baldflow_task("select-batch", run_name="select batch [round {round_index}]", fault_after=True)
def select_batch(
    config: Config, scored: scoring.PoolScores, seed: int, round_index: int
) -> selecting.Selected:
    return selecting.select_batch(config, scored, seed)


@baldflow_task("assess-batch", run_name="assess batch [round {round_index}]")
def assess_batch(
    config: Config,
    data: CampaignPool,
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
