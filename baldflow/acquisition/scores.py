"""Individual acquisition scores: functions of MC log-probabilities `log_probs_N_K_C` -> `scores_N`.

Every score returns float64, is safe with log-probabilities of -inf (0 log 0 = 0) and never
returns NaN; NaN input is a ValueError. Work is chunked over N so any pool size fits in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

# Rows per chunk are sized to this many bytes (as float64): small enough that the temporaries
# of one chunk stay in the CPU caches, which is where the speed of the streaming comes from.
DEFAULT_CHUNK_BYTES = 8 * 2**20


class ScoreInputError(ValueError):
    """The log-probabilities given to a score function are unusable."""


def checked_log_probs(log_probs: Any, name: str = "log_probs_N_K_C") -> torch.Tensor:
    """`log_probs` as a 3-d floating tensor [points, MC samples, classes] with K, C >= 1; a
    ScoreInputError naming `name` otherwise (shared by the scores, EPIG and batch quality)."""
    if not isinstance(log_probs, torch.Tensor):
        log_probs = torch.as_tensor(log_probs)
    if log_probs.ndim != 3:
        raise ScoreInputError(
            f"{name} must have 3 dimensions (points, MC samples, classes), "
            f"got shape {tuple(log_probs.shape)}"
        )
    if not log_probs.is_floating_point():
        raise ScoreInputError(f"{name} must be floating point, got {log_probs.dtype}")
    _, K, C = log_probs.shape
    if K < 1 or C < 1:
        raise ScoreInputError(f"{name} needs K >= 1 and C >= 1, got shape {(K, C)}")
    return log_probs


def _chunk_rows(K: int, C: int, chunk_bytes: int) -> int:
    return max(1, chunk_bytes // (K * C * 8))


def _raise_if_invalid(chunk: torch.Tensor, start: int) -> None:
    """NaN or +inf log-probabilities are a bug upstream; say where, rather than score them."""
    bad_rows = (torch.isnan(chunk) | (chunk == torch.inf)).flatten(1).any(1)
    if bad_rows.any():
        row = start + int(bad_rows.nonzero()[0])
        raise ScoreInputError(f"log_probs_N_K_C contains NaN or +inf (first at pool index {row})")


def _entropy_of_probs(probs_N_C: torch.Tensor) -> torch.Tensor:
    # entr(p) = -p log p with entr(0) = 0, so zero probabilities need no special case.
    return torch.special.entr(probs_N_C).sum(-1)


def _stream(
    log_probs_N_K_C: torch.Tensor,
    per_chunk: Callable[[torch.Tensor], torch.Tensor],
    chunk_bytes: int,
) -> torch.Tensor:
    """Apply `per_chunk` (float64 [n, K, C] log-probs -> [n]) chunk by chunk; float64 [N] out."""
    log_probs_N_K_C = checked_log_probs(log_probs_N_K_C)
    N, K, C = log_probs_N_K_C.shape
    scores_N = torch.empty(N, dtype=torch.float64, device=log_probs_N_K_C.device)
    step = _chunk_rows(K, C, chunk_bytes)
    for start in range(0, N, step):
        chunk = log_probs_N_K_C[start : start + step].to(torch.float64)
        _raise_if_invalid(chunk, start)
        scores_N[start : start + step] = per_chunk(chunk)
    return scores_N


def _mean_probs(log_probs_n_K_C: torch.Tensor) -> torch.Tensor:
    return log_probs_n_K_C.exp().mean(1)


def _bald_exact(log_probs_n_K_C: torch.Tensor) -> torch.Tensor:
    """BALD in float64 with 0 * log 0 = 0 spelled out; the slow path for rows with -inf."""
    log_probs_n_K_C = log_probs_n_K_C.to(torch.float64)
    probs_n_K_C = log_probs_n_K_C.exp()
    predictive_entropy = _entropy_of_probs(probs_n_K_C.mean(1))
    # Clamping -inf to the most negative double turns 0 * -inf (NaN) into 0 * finite = 0.
    finite_log_probs = log_probs_n_K_C.clamp_min(torch.finfo(torch.float64).min)
    expected_entropy = -(probs_n_K_C * finite_log_probs).sum((1, 2)) / log_probs_n_K_C.shape[1]
    return predictive_entropy - expected_entropy


def _bald_fast(log_probs_n_K_C: torch.Tensor) -> torch.Tensor:
    """BALD in the input's precision, float64 only for the final difference.

    One exp pass, then sum_kc p log p as a batched dot product (no temporary of the product)
    and sum_k p for the mean. A row with a -inf log-prob comes out NaN (0 * -inf) and is redone
    by the caller on the exact path, so the common case pays nothing for the guard.
    """
    n, K, C = log_probs_n_K_C.shape
    # The flat [n, 1, K*C] view needs a dense row-major chunk; exp() keeps its input's layout,
    # so a transposed or permuted pool would not flatten. Free when the chunk is dense already.
    log_probs_n_K_C = log_probs_n_K_C.contiguous()
    probs_n_K_C = log_probs_n_K_C.exp()
    sum_p_log_p = torch.bmm(
        probs_n_K_C.view(n, 1, K * C), log_probs_n_K_C.reshape(n, K * C, 1)
    ).view(n)
    mean_probs_n_C = probs_n_K_C.sum(1).div_(K).to(torch.float64)
    return _entropy_of_probs(mean_probs_n_C) + sum_p_log_p.to(torch.float64) / K


def bald(log_probs_N_K_C: torch.Tensor, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> torch.Tensor:
    """BALD, the mutual information I[y; w | x] = H[y | x] - E_w H[y | x, w], clamped at 0.

    Intermediate sums run in the dtype of the input (pass float64 log-probs for float64 all
    through; float32 costs about 1e-6 of absolute error and half the time).
    """
    log_probs_N_K_C = checked_log_probs(log_probs_N_K_C)
    N, K, C = log_probs_N_K_C.shape
    scores_N = torch.empty(N, dtype=torch.float64, device=log_probs_N_K_C.device)
    step = _chunk_rows(K, C, chunk_bytes)
    for start in range(0, N, step):
        chunk = log_probs_N_K_C[start : start + step]
        if K == 1:
            # One sample carries no disagreement: exactly 0, not float32 rounding noise.
            _raise_if_invalid(chunk, start)
            scores_N[start : start + step] = 0.0
            continue
        scores_n = _bald_fast(chunk)
        unsure = torch.isnan(scores_n)
        if unsure.any():
            _raise_if_invalid(chunk, start)
            scores_n[unsure] = _bald_exact(chunk[unsure])
        scores_N[start : start + step] = scores_n
    # I[y; w] >= 0 mathematically; rounding can push it a hair below zero.
    return scores_N.clamp_min_(0.0)


def entropy(log_probs_N_K_C: torch.Tensor, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> torch.Tensor:
    """Predictive entropy H[y | x] of the MC-averaged distribution."""
    return _stream(log_probs_N_K_C, lambda lp: _entropy_of_probs(_mean_probs(lp)), chunk_bytes)


def expected_conditional_entropy(
    log_probs_N_K_C: torch.Tensor, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> torch.Tensor:
    """E_w H[y | x, w]: the average entropy of the individual MC samples (aleatoric part)."""

    def per_chunk(lp: torch.Tensor) -> torch.Tensor:
        return _entropy_of_probs(lp.exp()).mean(1)

    return _stream(log_probs_N_K_C, per_chunk, chunk_bytes)


def _margin_chunk(log_probs_n_K_C: torch.Tensor) -> torch.Tensor:
    probs_n_C = _mean_probs(log_probs_n_K_C)
    if probs_n_C.shape[1] == 1:
        return torch.zeros(probs_n_C.shape[0], dtype=torch.float64, device=probs_n_C.device)
    top2 = probs_n_C.topk(2, dim=1).values
    return 1.0 - (top2[:, 0] - top2[:, 1])


def margin(log_probs_N_K_C: torch.Tensor, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> torch.Tensor:
    """1 - (p_top1 - p_top2) of the MC-averaged distribution: high when the top two are close."""
    return _stream(log_probs_N_K_C, _margin_chunk, chunk_bytes)


def least_confidence(
    log_probs_N_K_C: torch.Tensor, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> torch.Tensor:
    """1 - max_c p_c of the MC-averaged distribution."""
    return _stream(log_probs_N_K_C, lambda lp: 1.0 - _mean_probs(lp).max(1).values, chunk_bytes)


def _variation_ratios_chunk(log_probs_n_K_C: torch.Tensor) -> torch.Tensor:
    n, K, C = log_probs_n_K_C.shape
    votes_n_K = log_probs_n_K_C.argmax(-1)
    counts_n_C = torch.zeros(n, C, dtype=torch.float64, device=log_probs_n_K_C.device)
    counts_n_C.scatter_add_(1, votes_n_K, torch.ones_like(votes_n_K, dtype=torch.float64))
    return 1.0 - counts_n_C.max(1).values / K


def variation_ratios(
    log_probs_N_K_C: torch.Tensor, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> torch.Tensor:
    """1 - (fraction of the K samples that vote for the modal class)."""
    return _stream(log_probs_N_K_C, _variation_ratios_chunk, chunk_bytes)


def _mean_std_chunk(log_probs_n_K_C: torch.Tensor) -> torch.Tensor:
    probs_n_K_C = log_probs_n_K_C.exp()
    if probs_n_K_C.shape[1] == 1:
        return torch.zeros(probs_n_K_C.shape[0], dtype=torch.float64, device=probs_n_K_C.device)
    # Population std over the K samples (unbiased=False) keeps K = 2 well defined and small.
    return probs_n_K_C.std(1, unbiased=False).mean(1)


def mean_std(log_probs_N_K_C: torch.Tensor, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> torch.Tensor:
    """Mean over classes of the standard deviation of p(y=c | x, w) across the K samples."""
    return _stream(log_probs_N_K_C, _mean_std_chunk, chunk_bytes)


# Scores of the disagreement between the K samples rather than of the mean prediction: with
# K = 1 they are 0 for every point, so they need K >= 2 to rank anything.
DISAGREEMENT_SCORES = frozenset({"bald", "variation_ratios", "mean_std"})

SCORES: dict[str, Callable[..., torch.Tensor]] = {
    "bald": bald,
    "entropy": entropy,
    "margin": margin,
    "least_confidence": least_confidence,
    "variation_ratios": variation_ratios,
    "mean_std": mean_std,
}


def get_score(name: str) -> Callable[..., torch.Tensor]:
    """The score function called `name`; a ValueError listing the valid names otherwise."""
    try:
        return SCORES[name]
    except KeyError:
        raise ValueError(
            f"unknown score {name!r}; valid scores: {', '.join(sorted(SCORES))}"
        ) from None
