"""Batch-quality evidence for one acquired batch: how much it tells about the model, jointly.

BALD scores points one at a time, so a batch of individually informative points can still be
redundant: near-copies of one sample all have a high BALD score but teach the model the same
thing once. The numbers here make that visible per round (they are logged as metrics and
compared against a shadow BatchBALD batch):

- `batch_joint_mi`: I[y_1..y_B; w], the BatchBALD objective of the whole batch;
- `batch_bald_sum`: sum_i I[y_i; w], what top-k BALD believes it acquired;
- their difference (redundancy) and ratio, the class entropy of the batch and the number of
  near-duplicate pairs (e.g. repeated copies of one source sample).

Pure tensor maths on `log_probs_B_K_C` (log p(y_i = c | x_i, w_k) for the B batch points and the
same K consistent posterior samples); it imports only other acquisition modules.

The joint entropy follows the chain rule H[y_1..y_B] = sum_i E_{y_<i} H[y_i | y_<i], exactly as
BatchBALD's greedy gains do (see batchbald.py), so for BatchBALD's own batch the joint MI here
equals the sum of its gains (exactly in the exact regime):

- Exact: the label configurations m of y_<i are enumerated with their probabilities pi_m and
  posteriors W_mk = p(w_k | y_<i = m); the term for y_i is sum_m pi_m H[W_m @ p(y_i | w)].
  The last point's labels are summed analytically, never enumerated, so the result is exact
  whenever the C^(B-1) configurations of the first B-1 points (only those of non-zero
  probability are kept) fit in `num_samples` -- in particular whenever C^B <= num_samples.
- Sampled: once the next extension would exceed `num_samples` configurations, `num_samples`
  configurations are drawn from the (exact) joint of the prefix, and each is then extended by
  one label drawn from its own predictive p(y_i | y_<i = m): an ancestral sample of the joint.
  Every later term sum_m (1/M) H[p(y_i | y_<i = m)] is then a Monte Carlo average over
  configurations drawn from p(y_<i), unbiased for E_{y_<i} H[y_i | y_<i], with y_i itself still
  summed analytically (Rao-Blackwellised), which keeps the variance low. This is BatchBALD's
  sampled mode (sample from the joint, score the new point against each sample). The standard
  error shrinks like 1/sqrt(num_samples); the estimate of the joint MI is clamped at 0.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

import torch

from baldflow.acquisition.scores import (
    ScoreInputError,
    bald,
    checked_log_probs,
    expected_conditional_entropy,
)

DEFAULT_NUM_SAMPLES = 10_000
# Below this a BALD sum counts as zero: the batch carries no information, hence no redundancy.
_ZERO_INFORMATION = 1e-12


def _validate(log_probs_B_K_C: Any, num_samples: int) -> torch.Tensor:
    """float64 CPU log-probs [B, K, C]; a ScoreInputError (a ValueError) for unusable input."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    log_probs = checked_log_probs(log_probs_B_K_C, "log_probs_B_K_C")
    log_probs = log_probs.detach().to("cpu", torch.float64)
    if (torch.isnan(log_probs) | (log_probs == torch.inf)).any():
        raise ScoreInputError("log_probs_B_K_C contains NaN or +inf")
    return log_probs


def _entropy_rows(probs_M_C: torch.Tensor) -> torch.Tensor:
    return torch.special.entr(probs_M_C).sum(-1)


def _joint_entropy(
    log_probs_B_K_C: torch.Tensor, num_samples: int, generator: torch.Generator | None
) -> tuple[float, bool]:
    """(H[y_1..y_B], exact?) by the chain rule; see the module docstring for the estimator."""
    B, K, C = log_probs_B_K_C.shape
    probs_B_K_C = log_probs_B_K_C.exp()
    # log prod_{j<i} p(y_j = m_j | w_k) per configuration m: log posteriors up to normalisation,
    # kept in log space so long products cannot underflow to an all-zero row.
    log_joint_M_K = torch.zeros(1, K, dtype=torch.float64)
    weights_M = torch.ones(1, dtype=torch.float64)
    exact = True
    entropy = 0.0
    for i in range(B):
        posteriors_M_K = torch.softmax(log_joint_M_K, dim=1)
        predictive_M_C = posteriors_M_K @ probs_B_K_C[i]
        entropy += float(weights_M @ _entropy_rows(predictive_M_C))
        if i == B - 1:
            break
        if exact:
            joint_M_C = weights_M[:, None] * predictive_M_C
            alive = joint_M_C > 0
            if int(alive.sum()) <= num_samples:
                parents, classes = alive.nonzero(as_tuple=True)
                weights_M = joint_M_C[parents, classes]
            else:
                exact = False
                if generator is None:
                    generator = torch.Generator()
                    generator.seed()
                draws = torch.multinomial(
                    joint_M_C.flatten(), num_samples, replacement=True, generator=generator
                )
                parents, classes = draws // C, draws % C
                weights_M = torch.full((num_samples,), 1.0 / num_samples, dtype=torch.float64)
        else:
            parents = torch.arange(len(weights_M))
            classes = torch.multinomial(
                predictive_M_C, 1, replacement=True, generator=generator
            ).squeeze(1)
        log_joint_M_K = log_joint_M_K[parents] + log_probs_B_K_C[i][:, classes].T
    return entropy, exact


def _joint_mi(
    log_probs_B_K_C: torch.Tensor, num_samples: int, generator: torch.Generator | None
) -> tuple[float, bool]:
    if len(log_probs_B_K_C) == 0:
        return 0.0, True
    entropy, exact = _joint_entropy(log_probs_B_K_C, num_samples, generator)
    conditional = float(expected_conditional_entropy(log_probs_B_K_C).sum())
    # I >= 0 mathematically; rounding (exact) or sampling noise can push it a hair below.
    return max(entropy - conditional, 0.0), exact


def joint_mutual_information(
    log_probs_B_K_C: torch.Tensor,
    *,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    generator: torch.Generator | None = None,
) -> float:
    """I[y_1..y_B; w] = H[p(y_1..y_B)] - (1/K) sum_k sum_i H[p(y_i | w_k)], in nats.

    The BatchBALD objective of the whole batch, with p(y_1..y_B) = (1/K) sum_k prod_i
    p(y_i | w_k) over the same K posterior samples for every point. Exact while the label
    configurations of the first B-1 points fit in `num_samples` (always when C^B <= num_samples),
    a Monte Carlo estimate from `num_samples` configurations drawn from the joint beyond that
    (BatchBALD's sampled mode; the module docstring describes it). `generator` drives the
    sampling (a fresh OS-seeded one if None; pass one for reproducible metrics). 0 for an empty
    batch, the point's BALD score for a batch of one.
    """
    log_probs = _validate(log_probs_B_K_C, num_samples)
    return _joint_mi(log_probs, num_samples, generator)[0]


def _class_entropy(labels: Iterable[Hashable]) -> float:
    """Entropy in nats of the empirical distribution of `labels` (0 for none or one class)."""
    counts = Counter(labels)
    total = sum(counts.values())
    if total == 0:
        return 0.0
    return -sum(n / total * math.log(n / total) for n in counts.values())


def _as_label_list(labels: Any, B: int) -> list:
    if isinstance(labels, torch.Tensor):
        if labels.ndim != 1:
            raise ValueError(f"labels must be 1-dimensional, got shape {tuple(labels.shape)}")
        labels = labels.tolist()
    labels = list(labels)
    if len(labels) != B:
        raise ValueError(f"labels has {len(labels)} entries for a batch of {B}")
    for label in labels:
        if isinstance(label, float) and math.isnan(label):
            raise ValueError("labels contains NaN")
    return labels


def near_duplicate_pairs(
    sample_ids: Sequence[str], duplicate_key: Callable[[str], Hashable] | None = None
) -> int:
    """Unordered pairs of the batch whose `duplicate_key(sample_id)` is equal.

    With `duplicate_key=None` the ids themselves are compared, so a valid batch (distinct ids)
    has 0. With a key mapping repeated copies to their origin (e.g. the first element of
    `baldflow.data.repeat.split_repeat_id`), it counts the copies of one source sample that a
    batch acquired together: the redundancy BatchBALD exists to avoid, in plain numbers.
    """
    key = duplicate_key if duplicate_key is not None else (lambda sample_id: sample_id)
    groups = Counter(key(sample_id) for sample_id in sample_ids)
    return sum(n * (n - 1) // 2 for n in groups.values())


def batch_quality(
    log_probs_B_K_C: torch.Tensor,
    *,
    labels: Sequence[Hashable] | torch.Tensor | None = None,
    duplicate_key: Callable[[str], Hashable] | None = None,
    sample_ids: Sequence[str] | None = None,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    generator: torch.Generator | None = None,
) -> dict[str, float | int | bool]:
    """Evidence of how good one acquired batch is, as a flat dict of metrics.

    - `batch_joint_mi`: I[y_1..y_B; w] (see `joint_mutual_information`).
    - `batch_joint_mi_exact`: True when that value was computed exactly, False when sampled.
    - `batch_bald_sum`: sum of the points' BALD scores I[y_i; w].
    - `batch_redundancy`: bald_sum - joint_mi. The labels are independent given w, so
      H[y_1..y_B | w] = sum_i H[y_i | w] while H[y_1..y_B] <= sum_i H[y_i] (subadditivity):
      the joint MI never exceeds the BALD sum, and the gap is the information the batch counts
      twice (shared between its points, e.g. copies of one sample). >= 0 up to rounding, or up
      to the Monte Carlo error when the joint MI is sampled; it is reported unclamped so that
      estimation error stays visible.
    - `batch_redundancy_ratio`: joint_mi / bald_sum; 1 = no redundancy, 1/B = B copies of one
      point. Defined as 1.0 when bald_sum is 0 (an empty or fully certain batch has nothing to
      be redundant about), so the metric is never NaN.
    - `class_entropy`: entropy in nats of the class histogram of `labels` when given (the
      oracle's labels), else of the predicted classes (argmax of the mean predictive). log C
      at most; 0 when the batch is all one class.
    - `near_duplicate_pairs`: see `near_duplicate_pairs`; present only when `sample_ids` are
      given (without ids there is nothing to count, and a 0 would claim the batch is clean).
    """
    log_probs = _validate(log_probs_B_K_C, num_samples)
    B = len(log_probs)
    if labels is not None:
        labels = _as_label_list(labels, B)
    if sample_ids is not None:
        sample_ids = list(sample_ids)
        if len(sample_ids) != B:
            raise ValueError(f"sample_ids has {len(sample_ids)} entries for a batch of {B}")
    elif duplicate_key is not None:
        raise ValueError("duplicate_key needs sample_ids to apply to")

    joint_mi, exact = _joint_mi(log_probs, num_samples, generator)
    bald_sum = float(bald(log_probs).sum()) if B else 0.0
    ratio = joint_mi / bald_sum if bald_sum > _ZERO_INFORMATION else 1.0
    if labels is None:
        labels = log_probs.exp().mean(1).argmax(1).tolist() if B else []
    quality: dict[str, float | int | bool] = {
        "batch_joint_mi": joint_mi,
        "batch_joint_mi_exact": exact,
        "batch_bald_sum": bald_sum,
        "batch_redundancy": bald_sum - joint_mi,
        "batch_redundancy_ratio": ratio,
        "class_entropy": _class_entropy(labels),
    }
    if sample_ids is not None:
        quality["near_duplicate_pairs"] = near_duplicate_pairs(sample_ids, duplicate_key)
    return quality


def batch_overlap(ids_a: Iterable[Hashable], ids_b: Iterable[Hashable]) -> float:
    """|a ∩ b| / max(|a|, |b|) of two batches' ids, as sets: 1 = the same batch, 0 = disjoint.

    Dividing by the larger batch keeps a small batch inside a big one from scoring 1. Two empty
    batches are the same batch: 1.0.
    """
    a, b = set(ids_a), set(ids_b)
    largest = max(len(a), len(b))
    if largest == 0:
        return 1.0
    return len(a & b) / largest


def mi_gap(joint_mi_chosen: float, joint_mi_batchbald: float) -> float:
    """joint_mi_batchbald - joint_mi_chosen, in nats.

    Positive: the shadow BatchBALD batch would have carried that much more joint information
    than the batch the strategy actually chose (what stochastic acquisition gave up). Negative:
    the chosen batch beat BatchBALD's, which is possible because greedy BatchBALD is only
    (1 - 1/e)-optimal, or by Monte Carlo error when the joint MIs were sampled.
    """
    chosen, shadow = float(joint_mi_chosen), float(joint_mi_batchbald)
    if math.isnan(chosen) or math.isnan(shadow):
        raise ValueError(f"mi_gap of NaN: chosen={chosen}, batchbald={shadow}")
    return shadow - chosen
