"""Tasks: train a fresh model on the labeled set, evaluate it; keep the model of a round whose
batch waits for people, and load it back when their labels are in.

No retries on training: a failed fit is a bug or bad parameters, and running it again only
costs time.
"""

from __future__ import annotations

from baldflow.compute import fitting
from baldflow.config import Config
from baldflow.data.pool import CampaignPool
from baldflow.labeling import HandOff
from baldflow.models.weights import load_weights, save_weights
from baldflow.tasks.base import LOCAL_FILES, baldflow_task


@baldflow_task("check-model")
def check_model(config: Config, data: CampaignPool) -> str:
    """Build the campaign's network once on the data's shape before any round: a plug-in
    model that does not build, or gives logits of the wrong shape or not finite, fails the
    run here, before anything is committed. Returns how the network was split."""
    return fitting.check_model(config, data)


@baldflow_task("train", run_name="train [round {round_index}]", fault_after=True)
def train_model(
    config: Config,
    data: CampaignPool,
    labeled: list[tuple[str, int]],
    seed: int,
    round_index: int,
) -> fitting.Trained:
    return fitting.train(config, data, labeled, seed)


@baldflow_task("evaluate", run_name="evaluate [round {round_index}]", fault_after=True)
def evaluate_model(
    config: Config,
    data: CampaignPool,
    trained: fitting.Trained,
    seed: int,
    round_index: int,
) -> dict[str, float]:
    return fitting.evaluate(config, data, trained.model, seed)


# The model that chose a handed-off batch is tracked when the round completes, maybe days later
# in another process: its weights wait beside the pending batch. Writing is atomic, so a retry
# simply writes the same file again.
@baldflow_task(
    "save-handoff-model",
    run_name="keep the model for the hand-off [round {round_index}]",
    retry=LOCAL_FILES,
    fault_after=True,
)
def save_handoff_model(handoff: HandOff, trained: fitting.Trained, round_index: int) -> str:
    return str(save_weights(trained.model.state_dict(), handoff.model_path(round_index)))


@baldflow_task(
    "load-handoff-model",
    run_name="load the hand-off model [round {round_index}]",
    retry=LOCAL_FILES,
    fault_after=True,
)
def load_handoff_model(handoff: HandOff, round_index: int) -> dict:
    return load_weights(handoff.model_path(round_index))
