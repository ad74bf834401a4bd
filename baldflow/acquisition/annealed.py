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
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch

from baldflow.acquisition.selection import (
    SelectionError,
    perturbed_keys,
    weight_order,
)
from baldflow.acquisition.sharded import (
    _checked_seed,
    _validate,
    id_gumbel,
    mode_log_weights,
)
from baldflow.acquisition.strategy import (
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
        assert ids_N is not None and scores_N is not None
        schedule = coldness_schedule(batch_size, params["coldness"], params["coldness_end"])
        chosen = annealed_select_by_id(
            scores_N, ids_N, batch_size, self.mode, schedule, seed=noise.seed
        )
        rows = chosen.indices.tolist()
        picked = [ids_N[r] for r in rows]
        return Selection(picked, scores_N[rows], chosen.probabilities, chosen.keys)
