"""A round's batch with the reasons each sample was picked, from one or many scored shards.

Why a summary per shard: the ledger records, for every pick, its score, its first-pick
probability and its perturbed key. The picks themselves come from `sharded.shard_candidates` /
`merge_candidates` (exact whatever the shard layout), the scores travel with the candidates,
and the probability needs one pool-wide number, the normaliser sum_j exp(m l_j) of
`selection.first_pick_probabilities`. Each shard sends its log of that sum; the merge adds them
in log space. So a shard sends b candidates and a few numbers, and one process scoring the whole
pool is simply the one-shard case of the same code: single-process and sharded rounds record
the same batch (the probabilities agree to rounding, the sums being taken in another order).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from baldflow.acquisition.selection import (
    SelectionError,
    check_selection_args,
    perturbed_keys,
)
from baldflow.acquisition.sharded import (
    Candidates,
    merge_candidates,
    mode_log_weights,
    shard_candidates,
)

MODES_WITH_WEIGHTS = ("power", "softmax", "softrank")


@dataclass
class ShardSummary:
    """What one shard contributes to the batch: its candidates, their raw scores (aligned with
    `candidates.ids`), how many samples it considered, and log sum_j exp(m l_j) over them
    (-inf when none has a positive weight, or when the mode has no weights)."""

    candidates: Candidates
    scores: torch.Tensor
    count: int
    log_total: float


@dataclass
class Picks:
    """The batch in pick order: ids, raw scores, first-pick probabilities and perturbed keys
    (None where the mode has none: topk keys are the scores, random has no scores)."""

    sample_ids: list[str]
    scores: list[float | None]
    probabilities: list[float | None]
    keys: list[float | None]


def _stochastic(mode: str, coldness: float) -> bool:
    return mode in MODES_WITH_WEIGHTS and 0 < coldness < math.inf


def _scaled_log_weights(scores_n, mode, coldness, pool_scores) -> torch.Tensor:
    """l on the keys' scale (see selection.perturbed_keys), times m = max(coldness, 1)."""
    log_weights_n = mode_log_weights(scores_n, mode, pool_scores)
    _, on_key_scale = perturbed_keys(log_weights_n, torch.zeros_like(log_weights_n), coldness)
    return on_key_scale * max(coldness, 1.0)


def summarise_shard(
    scores_n: torch.Tensor,
    sample_ids: Sequence[str],
    batch_size: int,
    mode: str,
    coldness: float = 1.0,
    seed: int = 0,
    pool_scores: torch.Tensor | None = None,
) -> ShardSummary:
    """The shard's best `batch_size` candidates plus what the merge needs for the ledger."""
    coldness = check_selection_args(batch_size, mode, coldness)
    scores_n = torch.as_tensor(scores_n, dtype=torch.float64)
    candidates = shard_candidates(
        scores_n, sample_ids, batch_size, mode, coldness, seed, pool_scores
    )
    position = {sid: i for i, sid in enumerate(candidates.ids)}
    picked = torch.zeros(len(candidates.ids), dtype=torch.float64)
    if candidates.ids:
        # Only the candidates' scores are kept: look them up without a dict of the shard.
        rows = [i for i, sid in enumerate(sample_ids) if sid in position]
        for row in rows:
            picked[position[sample_ids[row]]] = scores_n[row]
    log_total = -math.inf
    if _stochastic(mode, coldness) and scores_n.numel():
        log_total = float(
            torch.logsumexp(_scaled_log_weights(scores_n, mode, coldness, pool_scores), 0)
        )
    return ShardSummary(candidates, picked, int(scores_n.numel()), log_total)


def merge_summaries(
    parts: Sequence[ShardSummary], batch_size: int, pool_scores: torch.Tensor | None = None
) -> Picks:
    """The pool's batch from every shard's summary, with each pick's score, probability, key.

    Softrank only: `pool_scores`, the pool's sorted scores (as for `summarise_shard`), since a
    pick's weight is its rank in the pool."""
    parts = list(parts)
    if not parts:
        raise SelectionError("no shard summaries to merge")
    ids = merge_candidates([part.candidates for part in parts], batch_size)
    score_of, key_of = {}, {}
    for part in parts:
        for i, sid in enumerate(part.candidates.ids):
            score_of[sid] = float(part.scores[i])
            key_of[sid] = float(part.candidates.keys[i])
    first = parts[0].candidates
    mode, coldness = first.mode, first.coldness
    count = sum(part.count for part in parts)
    scores = [score_of[sid] for sid in ids]
    if mode == "topk" or (mode != "random" and math.isinf(coldness)):
        probabilities = [1.0 if i == 0 else 0.0 for i in range(len(ids))]
        return Picks(ids, scores, probabilities, [key_of[sid] for sid in ids])
    keys = [key_of[sid] for sid in ids]
    if mode == "random" or coldness == 0:
        return Picks(ids, scores, [1.0 / count] * len(ids), keys)
    log_total = torch.logsumexp(
        torch.tensor([p.log_total for p in parts], dtype=torch.float64), 0
    ).item()
    if math.isinf(log_total):  # every weight 0 (power, no positive score): uniform
        return Picks(ids, scores, [1.0 / count] * len(ids), keys)
    if mode == "softrank" and pool_scores is None:
        raise SelectionError("softrank probabilities need the pool's sorted scores")
    weights = _scaled_log_weights(
        torch.tensor(scores, dtype=torch.float64), mode, coldness, pool_scores
    )
    probabilities = [math.exp(w - log_total) for w in weights.tolist()]
    return Picks(ids, scores, probabilities, keys)


def keys_by_id(
    scores_n: torch.Tensor,
    sample_ids: Sequence[str],
    mode: str,
    coldness: float = 1.0,
    seed: int = 0,
    pool_scores: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Every sample's perturbed key under the round's selection (the number the batch was cut
    by), for the audit trail's per-round score tables; None where the mode has no key (topk,
    or coldness inf: the score decides). Random and coldness 0: the id's Gumbel noise."""
    from baldflow.acquisition.sharded import order_columns

    if mode == "topk" or (mode != "random" and math.isinf(coldness)):
        return None
    scores_n = torch.as_tensor(scores_n, dtype=torch.float64)
    keys_n, _, _ = order_columns(scores_n, sample_ids, mode, coldness, seed, pool_scores)
    return keys_n
