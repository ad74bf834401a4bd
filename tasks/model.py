"""Tasks: train a fresh model on the labeled set, evaluate it; keep the model of a round whose
batch waits for people, and load it back when their labels are in.

No retries on training: a failed fit is a bug or bad parameters, and running it again only
costs time.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from baldflow.compute import campaign_data, fitting
from baldflow.config import Config
from baldflow.faults import fault_point
from baldflow.labeling import HandOff
from baldflow.models.weights import load_weights, save_weights


@task(name="train", task_run_name="train [round {round_index}]", cache_policy=NO_CACHE)
def train_model(
    config: Config,
    data: campaign_data.CampaignData,
    labeled: list[tuple[str, int]],
    seed: int,
    round_index: int,
) -> fitting.Trained:
    trained = fitting.train(config, data, labeled, seed)
    fault_point("train:after", round_index)
    return trained


@task(name="evaluate", task_run_name="evaluate [round {round_index}]", cache_policy=NO_CACHE)
def evaluate_model(
    config: Config,
    data: campaign_data.CampaignData,
    trained: fitting.Trained,
    seed: int,
    round_index: int,
) -> dict[str, float]:
    evaluation = fitting.evaluate(config, data, trained.model, seed)
    fault_point("evaluate:after", round_index)
    return evaluation


# The model that chose a handed-off batch is tracked when the round completes, maybe days later
# in another process: its weights wait beside the pending batch. Writing is atomic, so a retry
# simply writes the same file again.
@task(
    name="save-handoff-model",
    task_run_name="keep the model for the hand-off [round {round_index}]",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=1,
)
def save_handoff_model(handoff: HandOff, trained: fitting.Trained, round_index: int) -> str:
    path = save_weights(trained.model.state_dict(), handoff.model_path(round_index))
    fault_point("save-handoff-model:after", round_index)
    return str(path)


@task(
    name="load-handoff-model",
    task_run_name="load the hand-off model [round {round_index}]",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=1,
)
def load_handoff_model(handoff: HandOff, round_index: int) -> dict:
    state = load_weights(handoff.model_path(round_index))
    fault_point("load-handoff-model:after", round_index)
    return state
