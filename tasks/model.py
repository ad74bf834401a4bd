"""Tasks: train a fresh model on the labeled set, evaluate it on the test set.

No retries: a failed fit is a bug or bad parameters, and running it again only costs time.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from baldflow import steps
from baldflow.config import Config


@task(name="train", task_run_name="train [round {round_index}]", cache_policy=NO_CACHE)
def train_model(
    config: Config,
    data: steps.CampaignData,
    labeled: list[tuple[str, int]],
    seed: int,
    round_index: int,
) -> steps.Trained:
    return steps.train(config, data, labeled, seed)


@task(name="evaluate", task_run_name="evaluate [round {round_index}]", cache_policy=NO_CACHE)
def evaluate_model(
    config: Config, data: steps.CampaignData, trained: steps.Trained, seed: int, round_index: int
) -> dict[str, float]:
    return steps.evaluate(config, data, trained.model, seed)
