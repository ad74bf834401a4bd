"""Tasks of the `label-studio` oracle: the model's pre-annotations of a batch, send a pending
batch to the campaign's project, and pull people's annotations back into the hand-off folder
(baldflow.labeling.studio_rounds says why sending and pulling are safe to run again)."""

from __future__ import annotations

from functools import partial
from typing import Any

from baldflow.compute import fitting, predictions
from baldflow.config import Config
from baldflow.data.pool import CampaignPool
from baldflow.labeling import HandOff, PendingRound
from baldflow.labeling.label_studio import client_for
from baldflow.labeling.studio_rounds import (
    PullResult,
    SendResult,
    pull_annotations,
    send_batch,
)
from baldflow.stack.label_studio import workspace_connection
from baldflow.tasks.base import LABEL_STUDIO, baldflow_task


@baldflow_task("pre-annotate-batch", run_name="pre-annotate the batch [round {round_index}]")
def pre_annotate_batch(
    config: Config,
    data: CampaignPool,
    trained: fitting.Trained,
    sample_ids: list[str],
    seed: int,
    round_index: int,
) -> dict[str, list[float]]:
    """The model's guesses that people see beside each sample of the batch in Label Studio."""
    return predictions.batch_predictions(config, data, trained.model, sample_ids, seed)


@baldflow_task(
    "send-to-label-studio",
    run_name="send the batch to Label Studio [round {round_index}]",
    retry=LABEL_STUDIO,
)
def send_to_label_studio(
    config: Config,
    workspace_root: str,
    workspace_id: str,
    handoff: HandOff,
    pending: PendingRound,
    images: Any,
    round_index: int,
) -> tuple[SendResult, str]:
    """Make the batch tasks of the campaign's project (nothing when it was sent already);
    returns what happened and the project's address for people."""
    client = client_for(config.oracle.label_studio, partial(workspace_connection, workspace_root))
    sent = send_batch(
        client, handoff, pending, workspace_id=workspace_id,
        images=images,
    )  # fmt: skip
    return sent, client.project_address(sent.project_id)


@baldflow_task(
    "pull-from-label-studio",
    run_name="pull annotations from Label Studio [round {round_index}]",
    retry=LABEL_STUDIO,
)
def pull_from_label_studio(
    config: Config, workspace_root: str, handoff: HandOff, pending: PendingRound, round_index: int
) -> PullResult:
    """Check the batch's annotations; store them as the round's labels once all are in."""
    client = client_for(config.oracle.label_studio, partial(workspace_connection, workspace_root))
    return pull_annotations(
        client, handoff, pending, conflicts=config.oracle.label_studio.conflicts
    )
