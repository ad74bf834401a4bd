"""Annealed stochastic batches: each pick of the batch has its own coldness.

Why: the stochastic-acquisition poster ends with "sampling batch candidates with increasing
temperature" as future work. Gumbel-top-k draws the whole batch at one coldness beta; here the
batch is drawn one pick at a time, pick i at coldness beta_i, so the first picks can be greedy
(large beta: the most informative points) and the later ones exploratory (small beta: diversity,
which stands in for the correlations the individual scores ignore).

"Increasing temperature" means DEcreasing coldness: temperature = 1 / beta. The schedule of
`coldness_schedule(b, start, end)` with start > end is the poster's plan (the first picks the
greediest); start < end (cooling) is allowed too, and start == end is plain Gumbel-top-k.

Pick i takes the remaining point with the largest key  beta_i * log w(x) + g_i(x), where log w is
the mode's log-weight at beta = 1 (power: log s, softmax: s, softrank: -log rank of s in the whole
pool) and g_i(x) is standard Gumbel noise of the sample's id under a seed derived from (seed, i)
(`sharded.id_gumbel`). Because every pick uses fresh, independent noise, pick i is an exact draw
from softmax(beta_i log w) over the remaining points; with a constant beta the batch has the law
of sequential sampling without replacement, i.e. of Gumbel-top-k. Because the noise depends only
on (seed, i, id) and ties are broken by per-sample columns only, the batch does not depend on the
order of the pool (the same contract as `sharded.select_by_id`).

A pool scored in shards (`annealed_shard_candidates` per shard, `merge_annealed`): each shard
sends its best i + 1 samples for every pick i and its share of each pick's normaliser; the merge
replays the picks and gets the one process's batch exactly (see "in shards" below).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from baldflow.acquisition.selection import (
    SelectionError,
    perturbed_keys,
    weight_order,
)
from baldflow.acquisition.sharded import (
    _best,
    _checked_seed,
    _validate,
    id_gumbel,
    mode_log_weights,
)
from baldflow.acquisition.strategy import (
    PICK_CANDIDATES,
    POOL_SCORES,
    Noise,
    Problem,
    Selection,
    SelectionInputs,
    Strategy,
)

ANNEALED_MODES = ("power", "softmax", "softrank")


class AnnealedSelection(NamedTuple):
    """The batch in pick order; the winning key of each pick (on the scale of
    `selection.perturbed_keys` at that pick's coldness; the noise alone at coldness 0); and the
    probability that pick i chose its point given the earlier picks."""

    indices: torch.Tensor
    keys: list[float]
    probabilities: list[float]


def coldness_schedule(batch_size: int, start: float, end: float) -> list[float]:
    """Coldness of each pick, geometric from `start` (pick 0) to `end` (pick b-1).

    beta_i = start * (end / start) ** (i / (b - 1)) for i = 0 .. b-1, i.e. equal ratios between
    consecutive picks (linear in log beta, the natural scale of a coldness: the grid of the paper
    was {1/4, 1, 4, 8, 16}). The first and last entries are exactly `start` and `end`.
    Batch 1 gives [start]; start == end gives a constant schedule (0 and inf included: uniform
    or top-k at every pick). A geometric path cannot leave or reach 0 or inf from a finite
    positive value, so start != end with either at 0 or inf is refused: use a small or large
    finite value instead. start > end is the poster's "increasing temperature".
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SelectionError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    start, end = _checked_coldness(start, "start"), _checked_coldness(end, "end")
    if batch_size == 1 or start == end:
        return [start] * batch_size
    for name, value in (("start", start), ("end", end)):
        if value == 0 or math.isinf(value):
            raise SelectionError(
                f"a geometric coldness schedule cannot run between {start} and {end}: {name} = "
                f"{value} is not a finite positive value (use e.g. 1e-3 or 1e3, or start == end)"
            )
    log_start, log_end = math.log(start), math.log(end)
    last = batch_size - 1
    middle = [math.exp(log_start + (log_end - log_start) * i / last) for i in range(1, last)]
    return [start, *middle, end]


def annealed_select_by_id(
    scores_N,
    sample_ids: Sequence[str],
    batch_size: int,
    mode: str,
    schedule: Sequence[float],
    seed: int = 0,
) -> AnnealedSelection:
    """Draw min(batch_size, N) distinct points, pick i at coldness schedule[i].

    `schedule` needs one coldness per pick, at least min(batch_size, N) entries (extra entries
    are refused unless the pool is smaller than the batch); 0 = uniform, inf = greedy.
    Modes: power (weight s^beta; s <= 0 has weight 0 and is taken only once every remaining
    point has weight 0, then uniformly), softmax (exp(beta s)), softrank (rank^-beta, rank in
    the whole pool, fixed for the whole batch). topk and random ignore the coldness and are
    refused: use `sharded.select_by_id`.

    Ties on the key are broken as in `sharded`: the weight order, then the noise, then the
    smaller id, so a permuted pool gives the same ids. Cost: one `id_gumbel` over the
    remaining ids per pick (about 0.05 s per 100k ids) plus O(N) tensor work per pick.
    """
    if mode not in ANNEALED_MODES:
        raise SelectionError(
            f"annealed selection needs a stochastic mode ({', '.join(ANNEALED_MODES)}), got "
            f"{mode!r}; topk and random do not use a coldness"
        )
    scores_N, sample_ids, _ = _validate(scores_N, sample_ids, batch_size, mode, 1.0)
    seed = _checked_seed(seed)
    N = scores_N.numel()
    count = min(batch_size, N)
    schedule = _checked_schedule(schedule, batch_size, count)
    sorted_scores = scores_N.sort().values if mode == "softrank" else None
    log_weights_N = mode_log_weights(scores_N, mode, sorted_scores)
    orders_N = weight_order(scores_N, mode)

    remaining = torch.arange(N)
    picks: list[int] = []
    keys: list[float] = []
    probabilities: list[float] = []
    for i in range(count):
        coldness = schedule[i]
        ids = [sample_ids[j] for j in remaining.tolist()]
        gumbel = id_gumbel(pick_seed(seed, i), ids)
        log_weights = log_weights_N[remaining]
        key_n = gumbel if coldness == 0 else perturbed_keys(log_weights, gumbel, coldness)[0]
        best = best_position(key_n, orders_N[remaining], gumbel, ids)
        picks.append(int(remaining[best]))
        keys.append(float(key_n[best]))
        probabilities.append(float(pick_probabilities(log_weights, coldness)[best]))
        remaining = torch.cat([remaining[:best], remaining[best + 1 :]])
    return AnnealedSelection(torch.tensor(picks, dtype=torch.long), keys, probabilities)


def pick_seed(seed: int, pick: int) -> int:
    """The id_gumbel seed of pick `pick` of a batch drawn under `seed`: a 128-bit hash of both.

    Why hash: seed + pick would make pick 1 of round s reuse the noise of pick 0 of round s + 1;
    a hash gives every (seed, pick) its own noise, the same in every process.
    """
    digest = hashlib.blake2b(f"annealed/{seed}/{pick}".encode(), digest_size=16).digest()
    return int.from_bytes(digest, "little")


def best_position(
    keys_n: torch.Tensor, orders_n: torch.Tensor, noise_n: torch.Tensor, ids: Sequence[str]
) -> int:
    """Position of the best point: largest key, then weight order, then noise, then smaller id.

    Every column is per-sample, so the winner does not depend on the positions. Keys must not
    be NaN.
    """
    field = torch.arange(keys_n.numel())
    for column in (keys_n, orders_n, noise_n):
        values = column[field]
        field = field[values == values.max()]
        if field.numel() == 1:
            return int(field[0])
    return min(field.tolist(), key=ids.__getitem__)


def pick_probabilities(log_weights_n: torch.Tensor, coldness: float) -> torch.Tensor:
    """softmax(beta * log w) over the given points: the law of one Gumbel-max pick.

    Every weight 0 (or beta = 0): uniform. beta = inf: uniform over the points of the largest
    weight (ties at the top are broken by the noise, i.e. uniformly).
    """
    n = log_weights_n.numel()
    top = log_weights_n.max()
    if coldness == 0 or torch.isinf(top):
        return torch.full((n,), 1.0 / n, dtype=torch.float64)
    if math.isinf(coldness):
        best = (log_weights_n == top).to(torch.float64)
        return best / best.sum()
    # (l - top) <= 0 keeps exp from overflowing; -inf (weight 0) gives exactly 0.
    return torch.softmax((log_weights_n - top) * coldness, 0)


def _checked_coldness(value, name: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise SelectionError(f"{name} must be a number, got {value!r}") from None
    if math.isnan(value) or value < 0:
        raise SelectionError(
            f"{name} must be a coldness >= 0 (0 = uniform, inf = greedy), got {value}"
        )
    return value


def _checked_schedule(schedule, batch_size: int, count: int) -> list[float]:
    if isinstance(schedule, (str, bytes)) or not isinstance(schedule, Sequence):
        raise SelectionError(
            f"schedule must be a sequence of coldness values (see coldness_schedule), got "
            f"{schedule!r}"
        )
    if len(schedule) < count or len(schedule) > batch_size:
        raise SelectionError(
            f"schedule must have one coldness per pick: batch_size {batch_size}, got "
            f"{len(schedule)} values"
        )
    return [_checked_coldness(value, f"schedule[{i}]") for i, value in enumerate(schedule)]


# ------------------------------------------------------------------------------ strategies
class Annealed(Strategy):
    """`annealed-<mode>-bald`: the batch drawn one pick at a time from every unlabeled
    sample's BALD score, pick i at the i-th coldness of the geometric schedule from
    `acquisition.coldness` to `acquisition.coldness_end`, noise keyed by id."""

    needs = frozenset({POOL_SCORES})
    # In shards: each shard's per-pick candidates (annealed_shard_candidates), merged exactly.
    needs_in_shards = frozenset({PICK_CANDIDATES})
    score = "bald"
    min_mc_samples = 2  # BALD is 0 everywhere when K = 1

    def __init__(self, mode: str):
        self.name = f"annealed-{mode}-bald"
        self.mode = mode

    def check(self, params: Mapping[str, Any], *, sharded_by: str | None = None) -> list[Problem]:
        """Also refuses a schedule that no batch could follow (geometric between 0 or inf and
        another value), before the campaign starts rather than at its first selection."""
        problems = super().check(params, sharded_by=sharded_by)
        if "coldness" in params and "coldness_end" in params:
            start, end = params["coldness"], params["coldness_end"]
            try:
                coldness_schedule(2, start, end)
            except SelectionError:
                problems.append(
                    Problem(
                        "coldness_end",
                        f"must equal acquisition.coldness ({start!r}) for strategy "
                        f"{self.name!r} when either is 0 or inf, got {end!r}: a geometric "
                        "coldness schedule cannot leave or reach 0 or inf (use e.g. 1e-3 or 1e3)",
                        sole_cause=False,
                    )
                )
        return problems

    def select(
        self, inputs: SelectionInputs, batch_size: int, params: Mapping[str, Any], noise: Noise
    ) -> Selection:
        ids_N, scores_N = inputs.sample_ids, inputs.scores_N
        if scores_N is None:  # a pool scored in shards: merge their per-pick candidates
            return merge_annealed(inputs.summaries, batch_size)
        assert ids_N is not None
        schedule = coldness_schedule(batch_size, params["coldness"], params["coldness_end"])
        chosen = annealed_select_by_id(
            scores_N, ids_N, batch_size, self.mode, schedule, seed=noise.seed
        )
        rows = chosen.indices.tolist()
        picked = [ids_N[r] for r in rows]
        return Selection(picked, scores_N[rows], chosen.probabilities, chosen.keys)


# -------------------------------------------------------------------------- in shards
# A pool scored in shards: each shard sends, for pick i, its best i + 1 samples under pick i's
# key; the merge replays the picks on their union. Exact: pick i's winner w is the best
# remaining sample of its own shard, and the only samples of that shard ranked above w are
# earlier picks (at most i of them), so w is among its shard's best i + 1 under pick i's key.
# Cost: b (b + 1) / 2 candidates a shard instead of b, and b id-hash passes over the shard
# (one per pick, as the one process pays per pick over the remaining pool).


@dataclass(frozen=True)
class PickCandidates:
    """One shard's best samples for one pick (best first): ids, and per id the order columns
    of that pick (key, weight order, noise), its log-weight at beta = 1 and how many samples of
    the shard share that log-weight (coldness inf: the pick is uniform over the heaviest)."""

    ids: list[str]
    keys: torch.Tensor
    orders: torch.Tensor
    noise: torch.Tensor
    log_weights: torch.Tensor
    equal_counts: list[int]
    scores: torch.Tensor


@dataclass(frozen=True)
class AnnealedShard:
    """What one shard sends for an annealed batch: per pick i its candidates (`picks[i]`) and
    its share of the pick's normaliser: its i heaviest samples (`heavy_ids[i]`, their
    log-weights `heavy_log_weights[i]`) and, over the rest of the shard (the tail), the largest
    log-weight `tail_tops[i]` and log sum_j exp(beta_i (l_j - tail_tops[i])); `count` samples,
    `positive` of them with weight > 0; and the rules it was cut under."""

    picks: list[PickCandidates]
    heavy_ids: list[list[str]]
    heavy_log_weights: list[list[float]]
    tail_tops: list[float]
    tail_log_totals: list[float]
    count: int
    positive: int
    mode: str
    schedule: tuple[float, ...]
    seed: int
    # A shard of at most batch_size samples also sends them all: where the whole pool is
    # smaller than the batch, the batch (and its shorter schedule) is drawn from them directly.
    all_ids: list[str] | None = None
    all_scores: torch.Tensor | None = None

    @property
    def candidates(self) -> _Offered:
        """The ids this shard offers the merge (as a ShardSummary's candidates)."""
        ids = {sid for pick in self.picks for sid in pick.ids} | set(self.all_ids or ())
        return _Offered(sorted(ids))


class _Offered(NamedTuple):
    ids: list[str]


def annealed_shard_candidates(
    scores_n,
    sample_ids: Sequence[str],
    batch_size: int,
    mode: str,
    schedule: Sequence[float],
    seed: int = 0,
    pool_scores: torch.Tensor | None = None,
) -> AnnealedShard:
    """This shard's part of `annealed_select_by_id` on the whole pool (see `merge_annealed`).

    `schedule`: batch_size coldness values (the pool's size is not known to a shard). Softrank:
    `pool_scores` are the whole pool's sorted scores (`sharded.sorted_pool_scores`), since a
    rank is global."""
    if mode not in ANNEALED_MODES:
        raise SelectionError(f"annealed selection needs a stochastic mode, got {mode!r}")
    scores_n, sample_ids, _ = _validate(scores_n, sample_ids, batch_size, mode, 1.0)
    seed = _checked_seed(seed)
    schedule = _checked_schedule(schedule, batch_size, batch_size)
    if mode == "softrank":
        if pool_scores is None:
            raise SelectionError("softrank needs pool_scores: the whole pool's sorted scores")
    else:
        pool_scores = None
    log_weights_n = mode_log_weights(scores_n, mode, pool_scores)
    orders_n = weight_order(scores_n, mode)
    n = scores_n.numel()
    # The heaviest first (ties by the smaller id): pick i's normaliser keeps its i heaviest
    # apart, so that subtracting the earlier picks never cancels (see merge_annealed).
    by_weight = _best([log_weights_n], sample_ids, len(schedule))
    picks, heavy_ids, heavy_log_weights, tail_tops, tail_log_totals = [], [], [], [], []
    for i, coldness in enumerate(schedule):
        gumbel = id_gumbel(pick_seed(seed, i), sample_ids)
        key_n = gumbel if coldness == 0 else perturbed_keys(log_weights_n, gumbel, coldness)[0]
        best = _best([key_n, orders_n, gumbel], sample_ids, i + 1)
        index = torch.tensor(best, dtype=torch.long)
        chosen = log_weights_n[index]
        # Only coldness inf needs them (its pick is uniform over the heaviest remaining).
        counts = (
            [int((log_weights_n == value).sum()) for value in chosen.tolist()]
            if math.isinf(coldness)
            else [0] * len(best)
        )
        picks.append(
            PickCandidates(
                [sample_ids[j] for j in best], key_n[index].clone(), orders_n[index].clone(),
                gumbel[index].clone(), chosen.clone(), counts, scores_n[index].clone(),
            )
        )  # fmt: skip
        heavy = by_weight[:i]
        heavy_ids.append([sample_ids[j] for j in heavy])
        heavy_log_weights.append([float(log_weights_n[j]) for j in heavy])
        tail = torch.ones(n, dtype=torch.bool)
        tail[torch.tensor(heavy, dtype=torch.long)] = False
        tail_n = log_weights_n[tail]
        top = float(tail_n.max()) if tail_n.numel() else -math.inf
        tail_tops.append(top)
        if math.isinf(top) or coldness == 0 or math.isinf(coldness):
            tail_log_totals.append(-math.inf)
        else:
            tail_log_totals.append(float(torch.logsumexp((tail_n - top) * coldness, 0)))
    positive = int(torch.isfinite(log_weights_n).sum())
    small = n <= batch_size
    return AnnealedShard(
        picks, heavy_ids, heavy_log_weights, tail_tops, tail_log_totals, n, positive, mode,
        tuple(schedule), seed, list(sample_ids) if small else None,
        scores_n.clone() if small else None,
    )  # fmt: skip


def merge_annealed(parts: Sequence[AnnealedShard], batch_size: int) -> Selection:
    """The batch of `annealed_select_by_id` on the whole pool from every shard's part: ids in
    pick order, each pick's key and probability (given the earlier picks).

    The ids and keys are exactly the one process's. A probability is the same law computed
    another way: the pick's normaliser is the shards' sums less the earlier picks' weights, so
    it agrees to rounding (and less closely where the earlier picks held nearly all the mass)."""
    parts = list(parts)
    if not parts:
        raise SelectionError("no annealed shard parts to merge")
    if len({(p.mode, p.schedule, p.seed) for p in parts}) > 1:
        raise SelectionError("annealed parts were cut under different (mode, schedule, seed)")
    total = sum(p.count for p in parts)
    count = min(batch_size, total)
    schedule = parts[0].schedule
    if total < len(schedule):  # a short pool: every shard sent all of its samples
        return _short_pool(parts, batch_size)
    if batch_size != len(schedule):
        raise SelectionError(
            f"the parts were cut for a batch of {len(schedule)}, not {batch_size}"
        )
    picked: list[str] = []
    picked_weights: list[float] = []
    keys: list[float] = []
    probabilities: list[float] = []
    scores: list[float] = []
    taken: set[str] = set()
    positive = sum(p.positive for p in parts)
    for i in range(count):
        coldness = schedule[i]
        rows = [
            (part.picks[i], j)
            for part in parts
            for j, sid in enumerate(part.picks[i].ids)
            if sid not in taken
        ]
        ids = [c.ids[j] for c, j in rows]
        keys_m, orders_m, noise_m = (
            torch.tensor([float(getattr(c, name)[j]) for c, j in rows], dtype=torch.float64)
            for name in ("keys", "orders", "noise")
        )
        best = best_position(keys_m, orders_m, noise_m, ids)
        winner, j = rows[best]
        log_weight = float(winner.log_weights[j])
        remaining = total - i
        remaining_positive = positive - sum(1 for w in picked_weights if not math.isinf(w))
        if coldness == 0 or remaining_positive == 0:
            probability = 1.0 / remaining
        elif math.isinf(coldness):
            equal = sum(
                next(c.equal_counts[k] for k, v in enumerate(c.log_weights.tolist())
                     if v == log_weight)
                for c in (part.picks[i] for part in parts)
                if log_weight in c.log_weights.tolist()
            )  # fmt: skip
            equal -= sum(1 for w in picked_weights if w == log_weight)
            probability = 1.0 / equal
        else:
            probability = _pick_probability(parts, i, coldness, log_weight, picked, picked_weights)
        scores.append(float(winner.scores[j]))
        picked.append(ids[best])
        taken.add(ids[best])
        picked_weights.append(log_weight)
        keys.append(float(keys_m[best]))
        probabilities.append(probability)
    return Selection(picked, scores, probabilities, keys)


def _short_pool(parts: Sequence[AnnealedShard], batch_size: int) -> Selection:
    """The batch of a pool smaller than the shards' batch: `annealed_select_by_id` on every
    sample (each shard sent them all), with the schedule of the batch actually drawn (softrank:
    the ranks are taken among them, the whole pool, as in one process)."""
    ids = [sid for part in parts for sid in part.all_ids]
    scores_N = torch.cat([part.all_scores for part in parts])
    first = parts[0]
    start, end = first.schedule[0], first.schedule[-1]
    schedule = coldness_schedule(batch_size, start, end)
    chosen = annealed_select_by_id(scores_N, ids, batch_size, first.mode, schedule, first.seed)
    rows = chosen.indices.tolist()
    return Selection([ids[r] for r in rows], scores_N[rows], chosen.probabilities, chosen.keys)


def _pick_probability(parts, i, coldness, log_weight, picked, picked_weights) -> float:
    """softmax(beta_i l) of the winner over the remaining samples, from the shards' parts.

    The remaining mass is every shard's tail sum plus its heavy samples not yet picked, less
    the earlier picks that fell in a tail. No catastrophic cancellation: a shard with p picks
    in its tail has at least p unpicked heavy samples, each at least as heavy as any of them,
    so the subtracted mass never exceeds what stays. The reference is the largest remaining
    log-weight, as in `pick_probabilities`; the result agrees with it to a few ulps."""
    heavy = {}
    for part in parts:
        heavy.update(zip(part.heavy_ids[i], part.heavy_log_weights[i], strict=True))
    taken = set(picked)
    unpicked = [w for sid, w in heavy.items() if sid not in taken]
    tail_picks = [w for sid, w in zip(picked, picked_weights, strict=True) if sid not in heavy]
    tails = [part for part in parts if part.tail_log_totals[i] > -math.inf]
    top = max([*unpicked, *(part.tail_tops[i] for part in tails)])
    mass = sum(
        math.exp(part.tail_log_totals[i] + coldness * (part.tail_tops[i] - top)) for part in tails
    )
    mass += sum(math.exp(coldness * (w - top)) for w in unpicked)
    mass -= sum(math.exp(coldness * (w - top)) for w in tail_picks)
    return math.exp(coldness * (log_weight - top)) / mass
