"""Tasks: build the oracle, ask it for the labels of a batch; hand a batch to people and clear
the hand-off once its round is committed."""

from __future__ import annotations

import time
from typing import Any

from baldflow.config import Config
from baldflow.data.pool import CampaignPool
from baldflow.labeling import HandOff, Oracle, PendingRound, build_oracle
from baldflow.rounds import Labels
from baldflow.tasks.base import LOCAL_FILES, STORE, baldflow_task


@baldflow_task("build-oracle")
def make_oracle(config: Config, data: CampaignPool, handoff: HandOff) -> Oracle:
    return build_oracle(config.oracle.kind, pool=data, handoff=handoff)


# A retry helps an oracle that reads from somewhere shared (a hand-off file being written);
# asking an oracle twice gives the same answer.
@baldflow_task("label", run_name="label [round {round_index}]", retry=STORE, fault_after=True)
def label_batch(oracle: Oracle, sample_ids: list[str], round_index: int) -> Labels:
    started = time.perf_counter()
    labels = oracle.label(sample_ids)
    describe = getattr(oracle, "labeled_by", None)
    labeled_by = list(describe(sample_ids)) if describe is not None else [""] * len(sample_ids)
    return Labels(list(labels), labeled_by, time.perf_counter() - started)


# Every file of the hand-off is written atomically and the pending state last: a retry writes
# the same batch again.
@baldflow_task(
    "hand-off-batch",
    run_name="hand off batch for labeling [round {round_index}]",
    retry=LOCAL_FILES,
    fault_after=True,
)
def hand_off_batch(handoff: HandOff, pending: PendingRound, images: Any, round_index: int) -> str:
    """Write the to-label sheet (and contact sheet) people fill in; return the sheet's path."""
    return str(handoff.write(pending, images=images))


@baldflow_task(
    "clear-handoff",
    run_name="clear the hand-off [round {round_index}]",
    retry=LOCAL_FILES,
    fault_after=True,
)
def clear_handoff(handoff: HandOff, round_index: int) -> None:
    handoff.clear(round_index)
