"""The strategy plug-in: power-margin candidates (margin^coldness, Gumbel-top-k) spread over the
classes the model predicts for them, so that one batch does not ask about one class only."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from baldflow.acquisition import (
    CANDIDATE_LOG_PROBS,
    Noise,
    Problem,
    ScoreCut,
    Selection,
    SelectionInputs,
    Strategy,
)
from baldflow.acquisition.picks import merge_summaries


def predicted_classes(log_probs_M_K_C: torch.Tensor) -> list[int]:
    """The class of the MC-averaged predictive, log(1/K sum_k p_k), per candidate."""
    K = log_probs_M_K_C.shape[1]
    log_pbar_M_C = torch.logsumexp(log_probs_M_K_C.double(), dim=1) - math.log(K)
    return log_pbar_M_C.argmax(-1).tolist()


def round_robin(ordered_ids: list[str], classes: Mapping[str, int], size: int) -> list[str]:
    """`size` ids, taking in turn the best remaining id of each predicted class (classes in
    the order of their best id), each class's ids in the given order."""
    queues: dict[int, list[str]] = {}
    for sid in ordered_ids:
        queues.setdefault(classes[sid], []).append(sid)
    chosen: list[str] = []
    while len(chosen) < size:
        for queue in queues.values():
            if queue and len(chosen) < size:
                chosen.append(queue.pop(0))
    return chosen


class PowerMarginDiverse(Strategy):
    """`candidates_per_pick` x batch candidates by power-margin, the sampling of PowerBALD
    (Kirsch et al. 2023) on the margin score; the batch takes them class by class.

    Shardable: every shard cuts its candidates with baldflow's id-keyed noise (the cut below),
    the merged candidates' MC log-probs give their predicted classes, and the keys of the same
    cut order the candidates (`picks.merge_summaries`), so no maths is reimplemented here.
    """

    name = "example-power-margin-diverse"
    needs = frozenset({CANDIDATE_LOG_PROBS})
    score = "margin"
    mode = "power"

    def __init__(self, candidates_per_pick: int = 4):
        if isinstance(candidates_per_pick, bool) or candidates_per_pick < 1:
            raise ValueError(f"candidates_per_pick must be >= 1, got {candidates_per_pick!r}")
        self.candidates_per_pick = int(candidates_per_pick)

    def cut(self, params: Mapping[str, Any]) -> ScoreCut:
        size = params["batch_size"] * self.candidates_per_pick
        return ScoreCut(self.score, size, self.mode, params["coldness"])

    def check(self, params: Mapping[str, Any], *, sharded_by: str | None = None) -> list[Problem]:
        problems = super().check(params, sharded_by=sharded_by)
        if params.get("coldness") == 0:
            # Uniform keys: the candidates would not depend on the model at all.
            problems.append(Problem("coldness", f"must be > 0 for strategy {self.name!r}, got 0"))
        return problems

    def select(
        self, inputs: SelectionInputs, batch_size: int, params: Mapping[str, Any], noise: Noise
    ) -> Selection:
        """The candidates in power-margin key order, taken class by class (no draw of its
        own: the randomness is the cut's, keyed by id from the round's seed)."""
        assert inputs.candidate_ids is not None and inputs.log_probs_M_K_C is not None
        candidates = inputs.candidate_ids
        picks = merge_summaries(inputs.summaries, len(candidates))
        classes = dict(zip(candidates, predicted_classes(inputs.log_probs_M_K_C), strict=True))
        chosen = round_robin(picks.sample_ids, classes, min(batch_size, len(candidates)))
        score_of = dict(zip(picks.sample_ids, picks.scores, strict=True))
        key_of = dict(zip(picks.sample_ids, picks.keys, strict=True))
        return Selection(
            chosen,
            scores=[score_of[sid] for sid in chosen],
            keys=[key_of[sid] for sid in chosen],
        )
