"""Tasks: ask the oracle for the labels of the selected samples; hand a batch to people."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from baldflow.labeling import HandOff, Oracle, PendingRound


# A retry helps an oracle that reads from somewhere shared (a hand-off file being written).
@task(
    name="label",
    task_run_name="label [round {round_index}]",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=1,
)
def label_batch(oracle: Oracle, sample_ids: list[str], round_index: int) -> list[int]:
    return oracle.label(sample_ids)


@task(
    name="hand-off-batch",
    task_run_name="hand off batch for labeling [round {round_index}]",
    cache_policy=NO_CACHE,
)
def hand_off_batch(handoff: HandOff, pending: PendingRound, images: Any, round_index: int) -> str:
    """Write the to-label sheet (and contact sheet) people fill in; return the sheet's path."""
    return str(handoff.write(pending, images=images))
