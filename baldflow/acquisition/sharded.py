"""Exact distributed stochastic selection: every shard returns only its top-b candidates.

Why: a pool scored in shards on Dask workers should send back b candidates per shard, not N
scores, and the merged batch must be the batch one process would have picked. Gumbel-top-k
makes that possible: the batch is the b largest perturbed keys, and the b largest of a union
are among the b largest of each part. That needs each sample's Gumbel noise to depend only on
the round's seed and the sample's stable id (never on its position in a generator stream, which
changes with the shard layout), and a total order of the samples that uses per-sample data only.

Noise: a keyed BLAKE2b hash of the id (the seed is the key) gives 64 bits; their top 53 bits
give a uniform u in (0, 1), never 0 or 1; g = -log(-log u) is standard Gumbel.

The order (the same in `select_by_id`, `shard_candidates` and `merge_candidates`), best first:
  1. the key: the score for topk (and any mode at coldness inf), the noise g for random (and
     any mode at coldness 0), else the perturbed key of `selection.perturbed_keys`;
  2. for the stochastic modes, the weight order of `selection.weight_order` (it ranks points
     whose keys came out equal after rounding at a huge coldness), then the noise g (it orders
     the weight-0 points of power, all keyed -inf, uniformly at random);
  3. the sample id, smaller string first (Python's code-point order). This is the whole tie
     rule of topk: equal scores go to the smaller id, whatever their positions in the pool.
Every column is a property of the sample alone, except the softrank weight, which depends on
the global rank of the score: see `shard_candidates` for the extra pass that makes it exact.

This mirrors `selection.select` except where `select` used the position in the pool: its topk
breaks ties by the lower index, this module by the smaller id; and its noise comes from a
generator, this module's from the ids. The law of the batch is the same.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from baldflow import seeds
from baldflow.acquisition.selection import (
    SelectionError,
    check_selection_args,
    checked_scores,
    perturbed_keys,
    power_log_weights,
    softmax_log_weights,
    weight_order,
)

_TWO_POW_53 = 2.0**53


# ----------------------------------------------------------------------------------- noise
def id_hashes(seed: int, sample_ids: Sequence[str]) -> np.ndarray:
    """`seeds.id_hashes` (the keyed BLAKE2b hash of each id), refusing bad input with
    SelectionError like the rest of the selection maths."""
    return seeds.id_hashes(seed, sample_ids, SelectionError)


def hash_to_gumbel(hashes: np.ndarray) -> np.ndarray:
    """Standard Gumbel -log(-log u), u = (k + 1/2) / 2**53 with k the top 53 bits of the hash.

    u is never 0 or 1. Why two branches: for k >= 2**52 neither k + 1/2 nor u is a double, but
    1 - u = (2**53 - k - 1/2) / 2**53 is, and -log u = -log1p(-(1 - u)) is then exact to
    rounding; the upper tail of the Gumbel (the keys that win) lives there.
    """
    k = (hashes >> np.uint64(11)).astype(np.float64)  # < 2**53: exact in a double
    lower = k < _TWO_POW_53 / 2
    neg_log_u = np.empty_like(k)
    neg_log_u[lower] = -np.log((k[lower] + 0.5) / _TWO_POW_53)
    one_minus_u = (_TWO_POW_53 - k[~lower] - 0.5) / _TWO_POW_53
    neg_log_u[~lower] = -np.log1p(-one_minus_u)
    return -np.log(neg_log_u)


def id_gumbel(seed: int, sample_ids: Sequence[str]) -> torch.Tensor:
    """Gumbel(0, 1) noise of each sample id under `seed` (float64), independent of the sharding.

    The same id and seed give the same value in any process, shard layout or order; a
    different seed gives fresh noise. About 0.5 s per million ids on one core (the Python loop
    over the ids costs most). The hash and u are bit-exact everywhere; -log(-log u) uses
    numpy's log, which on a CPU with a different vector unit may differ in the last bit. The
    merge compares the keys each shard computed, so it still equals select_by_id run where the
    shards ran; only a re-run on another machine could reorder keys equal to within 1 ulp.
    """
    return torch.from_numpy(hash_to_gumbel(id_hashes(seed, sample_ids)))


# ----------------------------------------------------------------------------- the formulas
def competition_ranks_in(scores_n: torch.Tensor, sorted_pool_scores: torch.Tensor) -> torch.Tensor:
    """Rank of each score among all pool scores (ascending `sorted_pool_scores`); rank 1 = best.

    Tied scores share the best rank among them (1, 2, 2, 4), as `selection.competition_ranks`:
    rank = 1 + the number of pool scores strictly greater.
    """
    higher = sorted_pool_scores.numel() - torch.searchsorted(
        sorted_pool_scores, scores_n, right=True
    )
    return (higher + 1).to(torch.float64)


def softrank_log_weights_in(
    scores_n: torch.Tensor, sorted_pool_scores: torch.Tensor
) -> torch.Tensor:
    """-log rank_i, the rank taken in the whole pool (the softrank weight is rank_i^-1)."""
    return -competition_ranks_in(scores_n, sorted_pool_scores).log()


def mode_log_weights(
    scores_n: torch.Tensor, mode: str, sorted_pool_scores: torch.Tensor | None = None
) -> torch.Tensor:
    """log w_i at beta = 1 of a stochastic mode (power, softmax, softrank), with softrank's
    rank taken in the whole pool (`sorted_pool_scores`: every scored sample's score, sorted)."""
    if mode == "power":
        return power_log_weights(scores_n)
    if mode == "softmax":
        return softmax_log_weights(scores_n)
    return softrank_log_weights_in(scores_n, sorted_pool_scores)


def sorted_pool_scores(score_parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Every shard's scores in one ascending float64 tensor: the global input of softrank.

    Why: a softrank weight depends on the score's rank in the whole pool. The exact sharded
    softrank needs this extra pass: every shard sends its scores (8 bytes a sample), the driver
    sorts them once (O(N log N)) and hands the result back to every shard.
    """
    parts = [checked_scores(part, f"score_parts[{i}]") for i, part in enumerate(score_parts)]
    if not parts:
        return torch.empty(0, dtype=torch.float64)
    return torch.cat(parts).sort().values


# ------------------------------------------------------------------------------- candidates
@dataclass(frozen=True)
class Candidates:
    """A shard's best samples under the selection order, best first; at most batch_size.

    `keys`, `weight_orders` and `noise` are the numeric columns of the order (larger first),
    the id the last (smaller first). `mode`, `coldness` and `seed` let the merge refuse parts
    that were cut under different rules.
    """

    ids: list[str]
    keys: torch.Tensor
    weight_orders: torch.Tensor
    noise: torch.Tensor
    mode: str
    coldness: float
    seed: int

    def __len__(self) -> int:
        return len(self.ids)


def order_columns(scores_n, sample_ids, mode, coldness, seed, pool_scores):
    """The three numeric order columns (key, weight order, noise) of every sample of a shard."""
    zeros = torch.zeros_like(scores_n)
    if mode == "topk" or (mode != "random" and math.isinf(coldness)):
        return scores_n, zeros, zeros
    gumbel_n = torch.from_numpy(hash_to_gumbel(seeds.keyed_hashes(_seed_key(seed), sample_ids)))
    if mode == "random" or coldness == 0:
        return gumbel_n, zeros, zeros
    log_weights_n = mode_log_weights(scores_n, mode, pool_scores)
    keys_n, _ = perturbed_keys(log_weights_n, gumbel_n, coldness)
    return keys_n, weight_order(scores_n, mode), gumbel_n


def _best(columns: Sequence[torch.Tensor], ids: Sequence[str], count: int) -> list[int]:
    """Positions of the `count` best samples under the order (numeric columns larger first, then
    the smaller id), best first.

    Why not one sort: sorting a million keys is the slowest thing here. Each column cuts the
    field down by a top-k threshold; only the samples tied at the threshold reach the next
    column, and only the winners are sorted exactly.
    """
    n = len(ids)
    count = min(count, n)
    if count <= 0:
        return []
    winners: list[torch.Tensor] = []
    field = torch.arange(n)
    need = count
    for column in columns:
        if field.numel() <= need:
            break
        values = column[field]
        threshold = values.topk(need).values[-1]
        above = field[values > threshold]
        winners.append(above)
        need -= above.numel()
        field = field[values == threshold]
    chosen = torch.cat([*winners, field]).tolist() if field.numel() <= need else None
    if chosen is None:  # still too many tied on every number: the smaller ids win
        tied = heapq.nsmallest(need, field.tolist(), key=ids.__getitem__)
        chosen = torch.cat(winners).tolist() + tied if winners else tied
    index = torch.tensor(chosen, dtype=torch.long)
    rows = zip(*(column[index].neg().tolist() for column in columns), chosen, strict=True)
    return [row[-1] for row in sorted(rows, key=lambda row: (*row[:-1], ids[row[-1]]))]


def shard_candidates(
    scores_n,
    sample_ids: Sequence[str],
    batch_size: int,
    mode: str = "power",
    coldness: float = 1.0,
    seed: int = 0,
    pool_scores: torch.Tensor | None = None,
) -> Candidates:
    """This shard's best min(batch_size, n) samples, with the columns the merge orders by.

    Run it on every shard with the same batch_size, mode, coldness and seed, then
    `merge_candidates`: the result is `select_by_id` on the whole pool, exactly.

    Softrank only: `pool_scores` must be `sorted_pool_scores` of every shard's scores (the
    whole pool, ascending), because a softrank weight is the score's rank in the whole pool.
    That is the exact method's extra pass: 8 bytes a sample gathered and broadcast once.
    """
    scores_n, sample_ids, coldness = _validate(scores_n, sample_ids, batch_size, mode, coldness)
    if mode == "softrank" and 0 < coldness < math.inf:
        if pool_scores is None:
            raise SelectionError(
                "pool_scores is required for softrank: the sorted scores of the whole pool "
                "(sorted_pool_scores of every shard's scores), since a rank is global"
            )
        pool_scores = checked_scores(pool_scores, "pool_scores")
        if pool_scores.numel() < scores_n.numel():
            raise SelectionError(
                f"pool_scores must hold the whole pool, got {pool_scores.numel()} scores for a "
                f"shard of {scores_n.numel()}"
            )
        if pool_scores.numel() > 1 and bool((pool_scores[1:] < pool_scores[:-1]).any()):
            raise SelectionError("pool_scores must be sorted ascending (see sorted_pool_scores)")
    return _cut(scores_n, sample_ids, batch_size, mode, coldness, seed, pool_scores)


def _cut(scores_n, sample_ids, batch_size, mode, coldness, seed, pool_scores) -> Candidates:
    """shard_candidates on validated input."""
    seed = _checked_seed(seed)
    columns = order_columns(scores_n, sample_ids, mode, coldness, seed, pool_scores)
    best = _best(columns, sample_ids, batch_size)
    index = torch.tensor(best, dtype=torch.long)
    keys, orders, noise = (column[index].clone() for column in columns)
    return Candidates([sample_ids[i] for i in best], keys, orders, noise, mode, coldness, seed)


def merge_candidates(parts: Sequence[Candidates], batch_size: int) -> list[str]:
    """The batch of the whole pool from every shard's `shard_candidates`: ids in pick order.

    Exact because the order is total and per-sample: the best b of the pool are among the best b
    of the shard each came from. Cost: a sort of at most shards * b candidates.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SelectionError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    parts = list(parts)
    for i, part in enumerate(parts):
        if not isinstance(part, Candidates):
            raise SelectionError(f"parts[{i}] must be Candidates, got {type(part).__name__}")
    rules = {(part.mode, part.coldness, part.seed) for part in parts}
    if len(rules) > 1:
        raise SelectionError(
            f"parts were cut under different (mode, coldness, seed): {sorted(rules, key=str)}"
        )
    ids = [sample_id for part in parts for sample_id in part.ids]
    if len(set(ids)) != len(ids):
        raise SelectionError(f"parts share sample ids: {sorted(_duplicates(ids))[:5]}")
    if not ids:
        return []
    columns = [
        torch.cat([getattr(part, name) for part in parts]).to(torch.float64)
        for name in ("keys", "weight_orders", "noise")
    ]
    return [ids[i] for i in _best(columns, ids, batch_size)]


def select_by_id(
    scores_N,
    sample_ids: Sequence[str],
    batch_size: int,
    mode: str = "power",
    coldness: float = 1.0,
    seed: int = 0,
) -> list[str]:
    """Pick min(batch_size, N) distinct sample ids by `mode`, with the noise of `id_gumbel`.

    The single-process reference of the sharded path. Modes and coldness as
    `selection.select`: topk deterministic; power weights s^beta (s <= 0: weight 0, taken only
    after every positive-weight point, then in noise order); softmax exp(beta s); softrank
    rank^-beta; random uniform; coldness 0 uniform by the noise, inf top-k. Ties as in the
    module docstring: never by position, so a permuted pool gives the same ids.
    """
    scores_N, sample_ids, coldness = _validate(scores_N, sample_ids, batch_size, mode, coldness)
    pool_scores = scores_N.sort().values if mode == "softrank" else None
    return _cut(scores_N, sample_ids, batch_size, mode, coldness, seed, pool_scores).ids


# ------------------------------------------------------------------------------- validation
def _seed_key(seed) -> bytes:
    return _checked_seed(seed).to_bytes(seeds.SEED_BYTES, "little")


def _checked_seed(seed) -> int:
    return seeds.checked_seed(seed, SelectionError)


def _checked_ids(sample_ids) -> list[str]:
    return seeds.checked_ids(sample_ids, SelectionError)


def _duplicates(ids: Sequence[str]) -> set[str]:
    seen: set[str] = set()
    return {sample_id for sample_id in ids if sample_id in seen or seen.add(sample_id)}


def _validate(scores, sample_ids, batch_size, mode, coldness):
    coldness = check_selection_args(batch_size, mode, coldness)
    scores = checked_scores(scores, "scores")
    sample_ids = _checked_ids(sample_ids)
    if len(sample_ids) != scores.numel():
        raise SelectionError(
            f"sample_ids must have one id per score: {len(sample_ids)} ids for "
            f"{scores.numel()} scores"
        )
    if len(set(sample_ids)) != len(sample_ids):
        raise SelectionError(
            f"sample_ids must be unique; repeated: {sorted(_duplicates(sample_ids))[:5]}"
        )
    return scores, sample_ids, coldness
