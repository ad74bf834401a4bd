"""Batch selection from individual scores: top-k and stochastic (Gumbel-top-k) acquisition.

The stochastic modes sample `batch_size` distinct points without replacement, sequentially
from a categorical distribution over the pool. Perturbing each log-weight with independent
standard Gumbel noise and taking the top b keys draws exactly that sample in one shot.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

MODES = ("topk", "power", "softmax", "softrank", "random")


class SelectionError(ValueError):
    """Bad input to a selection function; the message names the argument and value."""


class Selection(NamedTuple):
    """The picked indices plus, for every pool point, why it was or was not picked.

    `probabilities_N` is the probability of each point being the *first* pick (its normalised
    weight); `keys_N` is the perturbed key that was ranked (for topk, the score itself).
    """

    indices: torch.Tensor
    probabilities_N: torch.Tensor
    keys_N: torch.Tensor


def standard_gumbel(n: int, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """n independent Gumbel(0, 1) draws."""
    uniform = torch.rand(n, generator=generator, dtype=dtype)
    # rand is in [0, 1); keep it off 0 so neither log sees a 0.
    tiny = torch.finfo(dtype).tiny
    return -torch.log(-torch.log(uniform.clamp_min(tiny)))


def power_log_weights(scores_N: torch.Tensor, coldness: float) -> torch.Tensor:
    """log(s_i^beta); -inf for s_i <= 0 (weight 0). beta = 0 gives every point weight 1."""
    if coldness == 0:
        return torch.zeros_like(scores_N)
    positive = scores_N > 0
    safe = torch.where(positive, scores_N, torch.ones_like(scores_N))
    return torch.where(positive, coldness * safe.log(), torch.full_like(scores_N, -math.inf))


def softmax_log_weights(scores_N: torch.Tensor, coldness: float) -> torch.Tensor:
    """log(exp(beta * s_i)) = beta * s_i."""
    return coldness * scores_N


def competition_ranks(scores_N: torch.Tensor) -> torch.Tensor:
    """Rank 1 = highest score; tied scores share the best rank among them (1, 2, 2, 4)."""
    ascending = scores_N.sort().values
    higher = scores_N.numel() - torch.searchsorted(ascending, scores_N, right=True)
    return (higher + 1).to(torch.float64)


def softrank_log_weights(scores_N: torch.Tensor, coldness: float) -> torch.Tensor:
    """log(rank_i^-beta) = -beta log rank_i."""
    return -coldness * competition_ranks(scores_N).log()


_LOG_WEIGHTS = {
    "power": power_log_weights,
    "softmax": softmax_log_weights,
    "softrank": softrank_log_weights,
}


def first_pick_probabilities(log_weights_N: torch.Tensor) -> torch.Tensor:
    """Normalised weights; uniform when every weight is 0 (so the fallback is explicit)."""
    if torch.isinf(log_weights_N).all():
        return torch.full_like(log_weights_N, 1.0 / log_weights_N.numel())
    return torch.softmax(log_weights_N, 0)


def _validate(scores_N, batch_size, mode, coldness) -> torch.Tensor:
    if mode not in MODES:
        raise SelectionError(f"unknown selection mode {mode!r}; valid modes: {', '.join(MODES)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise SelectionError(f"batch_size must be an integer, got {batch_size!r}")
    if batch_size < 1:
        raise SelectionError(f"batch_size must be >= 1, got {batch_size}")
    coldness = float(coldness)
    if math.isnan(coldness) or coldness < 0:
        raise SelectionError(f"coldness must be >= 0 (0 = uniform, inf = top-k), got {coldness}")
    scores_N = torch.as_tensor(scores_N)
    if scores_N.ndim != 1:
        raise SelectionError(f"scores_N must be one-dimensional, got shape {tuple(scores_N.shape)}")
    scores_N = scores_N.detach().to("cpu", torch.float64)
    bad = ~torch.isfinite(scores_N)
    if bad.any():
        first = int(bad.nonzero()[0])
        raise SelectionError(
            f"scores_N must be finite: {int(bad.sum())} NaN or inf value(s), the first at index "
            f"{first} ({float(scores_N[first])})"
        )
    return scores_N


def _top(keys_N: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the `count` largest keys, largest first; ties go to the lower index.

    torch.topk alone breaks ties arbitrarily, and a full stable sort of a million keys costs
    more than everything else here, so: topk for the threshold, then an exact tie rule.
    """
    if count <= 0:
        return torch.empty(0, dtype=torch.long)
    threshold = keys_N.topk(count).values[-1]
    above = (keys_N > threshold).nonzero().squeeze(1)
    at = (keys_N == threshold).nonzero().squeeze(1)[: count - above.numel()]
    chosen = torch.cat([above, at])
    return chosen[keys_N[chosen].argsort(descending=True, stable=True)]


def select(
    scores_N: torch.Tensor,
    batch_size: int,
    mode: str = "power",
    coldness: float = 1.0,
    generator: torch.Generator | None = None,
    return_details: bool = False,
) -> torch.Tensor | Selection:
    """Pick min(batch_size, N) distinct pool indices from `scores_N` by `mode`.

    Modes (beta = `coldness`):
      - topk: the highest scores, deterministic (ties go to the lower index).
      - power: sample without replacement with weights s_i^beta (PowerBALD). Points with
        s_i <= 0 have weight 0: they are taken only once every point with a positive score
        has been taken, and then uniformly at random among themselves.
      - softmax: weights exp(beta * s_i).
      - softrank: weights rank_i^-beta with rank 1 the highest score (ties share a rank).
      - random: uniform, ignoring the scores.
    beta = 0 makes every stochastic mode uniform; beta = inf makes it top-k.

    The same `generator` state gives the same batch. Without a generator a fresh one is seeded
    from the operating system (never the global torch RNG): pass one for reproducible runs.

    Returns a LongTensor of indices, in pick order. With `return_details=True` returns a
    `Selection` (indices, per-point first-pick probabilities, per-point perturbed keys).
    """
    scores_N = _validate(scores_N, batch_size, mode, coldness)
    coldness = float(coldness)
    N = scores_N.numel()
    count = min(batch_size, N)
    if generator is None:
        generator = torch.Generator()
        generator.seed()
    if N == 0:
        empty = torch.empty(0, dtype=torch.float64)
        indices = torch.empty(0, dtype=torch.long)
        return Selection(indices, empty, empty) if return_details else indices

    if mode == "topk" or (mode != "random" and math.isinf(coldness)):
        indices = _top(scores_N, count)
        probabilities_N = torch.zeros(N, dtype=torch.float64)
        probabilities_N[indices[0]] = 1.0
        keys_N = scores_N.clone()
    elif mode == "random":
        keys_N = standard_gumbel(N, generator)
        indices = _top(keys_N, count)
        probabilities_N = torch.full((N,), 1.0 / N, dtype=torch.float64)
    else:
        log_weights_N = _LOG_WEIGHTS[mode](scores_N, coldness)
        gumbel_N = standard_gumbel(N, generator)
        keys_N = log_weights_N + gumbel_N
        probabilities_N = first_pick_probabilities(log_weights_N)
        sampleable = torch.isfinite(log_weights_N)
        n_sampleable = int(sampleable.sum())
        indices = _top(keys_N, min(count, n_sampleable))
        if count > n_sampleable:
            # Weight-0 points (power with s <= 0) fill the rest uniformly: rank them by the
            # same Gumbel noise alone, which is a uniform random order.
            zero_weight = (~sampleable).nonzero().squeeze(1)
            fill = zero_weight[_top(gumbel_N[zero_weight], count - n_sampleable)]
            indices = torch.cat([indices, fill])

    indices = indices.to(torch.long)
    if return_details:
        return Selection(indices, probabilities_N, keys_N)
    return indices
