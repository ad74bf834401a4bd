"""The scored strategies: a selection mode applied to one score of each sample (`power-bald`,
`topk-entropy`, `softmax-epig`, ...) and `random`, which scores nothing.

Their batch is cut where the scores are: every shard (or the one process) keeps its best
candidates under the mode (`picks.summarise_shard`), and selecting merges those summaries
(`picks.merge_summaries`), so a pool scored in shards gives the one process's batch.
EPIG too: its targets are chosen by a keyed hash of the ids and predicted once, then broadcast
to every shard (`compute.sharding.write_epig_targets`); a sample's EPIG depends only on its own
log-probs and the targets', so each shard scores its samples as the one process does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from baldflow.acquisition.picks import merge_summaries
from baldflow.acquisition.scores import DISAGREEMENT_SCORES
from baldflow.acquisition.strategy import SAMPLE_SCORES, Noise, Selection, SelectionInputs, Strategy

# EPIG is scored like the scores of scores.py but needs target inputs, built per round.
EPIG = "epig"


class ScoredStrategy(Strategy):
    """`mode` applied to the per-sample `score` (None: random, every score 0 and unrecorded)."""

    needs = frozenset({SAMPLE_SCORES})

    def __init__(self, name: str, mode: str, score: str | None):
        self.name = name
        self.mode = mode
        self.score = score

    @property
    def min_mc_samples(self) -> int:
        # BALD and its kin, and EPIG, are 0 everywhere when K = 1.
        return 2 if self.score in DISAGREEMENT_SCORES or self.score == EPIG else 1

    def select(
        self, inputs: SelectionInputs, batch_size: int, params: Mapping[str, Any], noise: Noise
    ) -> Selection:
        """The merge of the shards' candidates (each cut with the round's id-keyed noise)."""
        picks = merge_summaries(inputs.summaries, batch_size, inputs.sorted_scores)
        # Random scores nothing: its ledger rows carry no score.
        scores = None if self.score is None else picks.scores
        if self.mode == "topk":  # deterministic: no probability, the key is the score
            return Selection(picks.sample_ids, scores)
        return Selection(picks.sample_ids, scores, picks.probabilities, picks.keys)
