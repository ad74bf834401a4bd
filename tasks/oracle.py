"""Tasks: build the oracle, ask it for the labels of a batch; hand a batch to people and clear
the hand-off once its round is committed."""

from __future__ import annotations

import time
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from baldflow.compute import campaign_data
from baldflow.config import Config
from baldflow.faults import fault_point
from baldflow.labeling import HandOff, Oracle, PendingRound, build_oracle
from baldflow.rounds import Labels


@task(name="build-oracle", cache_policy=NO_CACHE)
def make_oracle(config: Config, data: campaign_data.CampaignData, handoff: HandOff) -> Oracle:
    if data.on_disk:
        # Simulated labels of a pool on disk are read by id, never held as a dict of N ids.
        if config.oracle.kind == "simulated":
            from baldflow.labeling import DiskPoolOracle

            return DiskPoolOracle(data.disk.pool)
        return build_oracle(config.oracle.kind, pool_ids=[], pool_labels=[], handoff=handoff)
    splits = data.splits
    return build_oracle(
        config.oracle.kind,
        pool_ids=splits.pool_ids,
        pool_labels=splits.pool_y.tolist(),
        handoff=handoff,
    )


# A retry helps an oracle that reads from somewhere shared (a hand-off file being written);
# asking an oracle twice gives the same answer.
@task(
    name="label",
    task_run_name="label [round {round_index}]",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=1,
)
def label_batch(oracle: Oracle, sample_ids: list[str], round_index: int) -> Labels:
    started = time.perf_counter()
    labels = oracle.label(sample_ids)
    describe = getattr(oracle, "labeled_by", None)
    labeled_by = list(describe(sample_ids)) if describe is not None else [""] * len(sample_ids)
    result = Labels(list(labels), labeled_by, time.perf_counter() - started)
    fault_point("label:after", round_index)
    return result


# Every file of the hand-off is written atomically and the pending state last: a retry writes
# the same batch again.
@task(
    name="hand-off-batch",
    task_run_name="hand off batch for labeling [round {round_index}]",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=1,
)
def hand_off_batch(handoff: HandOff, pending: PendingRound, images: Any, round_index: int) -> str:
    """Write the to-label sheet (and contact sheet) people fill in; return the sheet's path."""
    sheet = str(handoff.write(pending, images=images))
    fault_point("hand-off-batch:after", round_index)
    return sheet


@task(
    name="clear-handoff",
    task_run_name="clear the hand-off [round {round_index}]",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=1,
)
def clear_handoff(handoff: HandOff, round_index: int) -> None:
    handoff.clear(round_index)
    fault_point("clear-handoff:after", round_index)
