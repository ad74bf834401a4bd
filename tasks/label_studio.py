"""Tasks of the `label-studio` oracle: send a pending batch to the campaign's project, and pull
people's annotations back into the hand-off folder (baldflow.labeling.studio_rounds says why
both are safe to run again)."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from baldflow.config import Config
from baldflow.labeling import HandOff, PendingRound
from baldflow.labeling.label_studio import client_for
from baldflow.labeling.studio_rounds import (
    PullResult,
    SendResult,
    pull_annotations,
    send_batch,
)


@task(
    name="send-to-label-studio",
    task_run_name="send the batch to Label Studio [round {round_index}]",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=2,
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
    client = client_for(config.oracle.label_studio, workspace_root)
    sent = send_batch(
        client, handoff, pending, workspace_id=workspace_id,
        images=images,
    )  # fmt: skip
    return sent, client.project_address(sent.project_id)


@task(
    name="pull-from-label-studio",
    task_run_name="pull annotations from Label Studio [round {round_index}]",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=2,
)
def pull_from_label_studio(
    config: Config, workspace_root: str, handoff: HandOff, pending: PendingRound, round_index: int
) -> PullResult:
    """Check the batch's annotations; store them as the round's labels once all are in."""
    client = client_for(config.oracle.label_studio, workspace_root)
    return pull_annotations(
        client, handoff, pending, conflicts=config.oracle.label_studio.conflicts
    )
