"""Task: ask the oracle for the labels of the selected samples."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from baldflow.oracle import Oracle


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
