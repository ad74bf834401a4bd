"""Batch selection from individual scores: top-k and stochastic (Gumbel-top-k) acquisition.

The stochastic modes sample `batch_size` distinct points without replacement, sequentially
from a categorical distribution over the pool. Perturbing each log-weight with independent
standard Gumbel noise and taking the top b keys draws exactly that sample in one shot. Keys
are kept finite at any coldness and ties are broken by an exact rule, so the indices are always
distinct and the law holds from coldness 0 (uniform) to inf (top-k).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

MODES = ("topk", "power", "softmax", "softrank", "random")


class SelectionError(ValueError):
    """Bad input to a selection function; the message names the argument and value."""


class Selection(NamedTuple):
    """The picked indices plus, for every pool point, why it was or was not picked.

    `probabilities_N` is the probability of each point being the *first* pick (its normalised
    weight); `keys_N` is the key that was ranked: the perturbed key of the stochastic modes
    (see perturbed_keys for its scale), the noise alone for random and coldness 0, the score
    itself for topk and coldness inf.
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


def power_log_weights(scores_N: torch.Tensor) -> torch.Tensor:
    """log s_i; -inf for s_i <= 0 (weight 0 at every beta > 0)."""
    positive = scores_N > 0
    safe = torch.where(positive, scores_N, torch.ones_like(scores_N))
    return safe.log().masked_fill_(~positive, -math.inf)


def softmax_log_weights(scores_N: torch.Tensor) -> torch.Tensor:
    """log exp(s_i) = s_i."""
    return scores_N


def competition_ranks(scores_N: torch.Tensor) -> torch.Tensor:
    """Rank 1 = highest score; tied scores share the best rank among them (1, 2, 2, 4)."""
    ascending = scores_N.sort().values
    higher = scores_N.numel() - torch.searchsorted(ascending, scores_N, right=True)
    return (higher + 1).to(torch.float64)


def softrank_log_weights(scores_N: torch.Tensor) -> torch.Tensor:
    """log rank_i^-1 = -log rank_i."""
    return -competition_ranks(scores_N).log()


# The log-weights at beta = 1 of each stochastic mode; at coldness beta the weights are w_i^beta.
_LOG_WEIGHTS = {
    "power": power_log_weights,
    "softmax": softmax_log_weights,
    "softrank": softrank_log_weights,
}


def weight_order(scores_n: torch.Tensor, mode: str) -> torch.Tensor:
    """A value that orders points as their weights do (at any beta > 0), exactly.

    It ranks points whose keys came out equal after rounding: at a huge beta the noise is
    absorbed (s + g / beta == s) and the heavier point is, to any precision, the one picked
    first, so its order must not be lost to a coarser representation such as log s.
    Power: s, with every s <= 0 equal (all weight 0). Softmax, softrank: s.
    """
    if mode == "power":
        return scores_n.clamp_min(0.0)
    return scores_n


def perturbed_keys(
    log_weights_N: torch.Tensor, gumbel_N: torch.Tensor, coldness: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gumbel-top-k keys of the weights w_i^beta, with no key overflowing; (keys, log-weights).

    `log_weights_N` are log w_i at beta = 1. The textbook key is beta log w_i + g_i, which
    overflows to inf once beta is large (1e308 * 5), and equal infinite keys rank nothing.
    Dividing every key by the same positive number keeps their order, so above beta = 1 the
    key is log w_i + g_i / beta instead: the same law, every term finite. The log-weights
    returned are on the keys' scale: beta log w_i up to beta = 1, log w_i above.
    """
    if coldness <= 1:
        scaled_N = log_weights_N if coldness == 1 else coldness * log_weights_N
        return scaled_N + gumbel_N, scaled_N
    return log_weights_N + gumbel_N / coldness, log_weights_N


def first_pick_probabilities(log_weights_N: torch.Tensor, coldness: float = 1.0) -> torch.Tensor:
    """Normalised weights exp(m l_i) / sum_j exp(m l_j) with m = max(beta, 1) and l the
    log-weights on the keys' scale (see perturbed_keys); uniform when every weight is 0.

    Taking out the largest l first keeps m (l_i - l_max) <= 0, so nothing overflows: weights
    too small for a double against the largest come out 0, which is what they are.
    """
    top = log_weights_N.max()
    if torch.isinf(top):
        return torch.full_like(log_weights_N, 1.0 / log_weights_N.numel())
    if coldness <= 1:
        return torch.softmax(log_weights_N, 0)
    return torch.softmax((log_weights_N - top).mul_(coldness), 0)


def _validate(scores_N, batch_size, mode, coldness) -> torch.Tensor:
    check_selection_args(batch_size, mode, coldness)
    return checked_scores(scores_N, "scores_N")


def check_selection_args(batch_size: int, mode: str, coldness: float) -> float:
    """SelectionError naming the argument unless mode, batch_size and coldness are valid;
    returns coldness as a float."""
    if mode not in MODES:
        raise SelectionError(f"unknown selection mode {mode!r}; valid modes: {', '.join(MODES)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise SelectionError(f"batch_size must be an integer, got {batch_size!r}")
    if batch_size < 1:
        raise SelectionError(f"batch_size must be >= 1, got {batch_size}")
    coldness = float(coldness)
    if math.isnan(coldness) or coldness < 0:
        raise SelectionError(f"coldness must be >= 0 (0 = uniform, inf = top-k), got {coldness}")
    return coldness


def checked_scores(scores: torch.Tensor, name: str) -> torch.Tensor:
    """`scores` as a float64 CPU vector; SelectionError naming `name` unless 1-d and finite."""
    scores = torch.as_tensor(scores)
    if scores.ndim != 1:
        raise SelectionError(f"{name} must be one-dimensional, got shape {tuple(scores.shape)}")
    scores = scores.detach().to("cpu", torch.float64)
    bad = ~torch.isfinite(scores)
    if bad.any():
        first = int(bad.nonzero()[0])
        raise SelectionError(
            f"{name} must be finite: {int(bad.sum())} NaN or inf value(s), the first at index "
            f"{first} ({float(scores[first])})"
        )
    return scores


# A tie-break column, given as the function from indices to its values there: it is read only
# where keys tie, so no column over the whole pool is built in the common case of no ties.
Column = Callable[[torch.Tensor], torch.Tensor]


def _top(keys_N: torch.Tensor, count: int, *tiebreaks: Column) -> torch.Tensor:
    """Indices of the `count` largest keys, largest first; distinct, whatever the keys hold.

    Equal keys are ordered by the tie-break columns in turn (larger first), then by the lower
    index. torch.topk alone breaks ties arbitrarily, and a full stable sort of a million keys
    costs more than everything else here, so: topk for the threshold, then an exact tie rule.
    Keys must not be NaN (nothing compares equal to NaN, so a NaN threshold would pick nothing).
    """
    if count <= 0:
        return torch.empty(0, dtype=torch.long)
    threshold = keys_N.topk(count).values[-1]
    above = (keys_N > threshold).nonzero().squeeze(1)
    at = (keys_N == threshold).nonzero().squeeze(1)
    wanted = count - above.numel()
    if at.numel() > wanted:
        if tiebreaks:
            first, rest = tiebreaks[0], tiebreaks[1:]
            within = tuple(lambda i, c=column, tied=at: c(tied[i]) for column in rest)
            at = at[_top(first(at), wanted, *within)]
        else:
            at = at[:wanted]
    chosen = torch.cat([above, at]).sort().values
    # Stable sorts from the least significant column up give the lexicographic order.
    for column in reversed(tiebreaks):
        chosen = chosen[column(chosen).argsort(descending=True, stable=True)]
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
    elif mode == "random" or coldness == 0:
        keys_N = standard_gumbel(N, generator)
        indices = _top(keys_N, count)
        probabilities_N = torch.full((N,), 1.0 / N, dtype=torch.float64)
    else:
        gumbel_N = standard_gumbel(N, generator)
        keys_N, log_weights_N = perturbed_keys(_LOG_WEIGHTS[mode](scores_N), gumbel_N, coldness)
        probabilities_N = first_pick_probabilities(log_weights_N, coldness)
        # Weight-0 points (power with s <= 0) all have the key -inf: they tie on the key and
        # on the weight order, so the noise alone ranks them, which is a uniform random order
        # after every point of positive weight.
        indices = _top(
            keys_N, count, lambda i: weight_order(scores_N[i], mode), gumbel_N.__getitem__
        )

    indices = indices.to(torch.long)
    if return_details:
        return Selection(indices, probabilities_N, keys_N)
    return indices
