"""BADGE (Ash et al., ICLR 2020): gradient embeddings and their k-means++ (D^2) seeding.

Pure tensor maths: the model side (penultimate features, MC-averaged predictive) comes from
`baldflow.inference.embed_pool`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from baldflow.acquisition.strategy import (
    EMBEDDINGS,
    SEEDING_CANDIDATES,
    Noise,
    Selection,
    SelectionInputs,
    Strategy,
)

# Elements (2 MB of float64) of the temporary difference block when updating the min-distance
# vector: memory stays O(N) beyond the embeddings whatever N and E are, and a block this size
# stays in cache (blocks of 4096 rows of E = 2560 were 15x slower, from allocation and paging).
DISTANCE_BLOCK_ELEMENTS = 2**18
# Predictive rows must sum to 1 up to this: catches log-probabilities or logits passed by mistake.
PROB_SUM_TOLERANCE = 1e-3


def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return batch_size


def _check_matrix(name: str, tensor_N_D, shape_name: str = "N x D") -> torch.Tensor:
    if not isinstance(tensor_N_D, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor_N_D).__name__}")
    if tensor_N_D.ndim != 2:
        raise ValueError(f"{name} must be 2-D ({shape_name}), got shape {tuple(tensor_N_D.shape)}")
    if not tensor_N_D.is_floating_point():
        raise ValueError(f"{name} must be floating point, got dtype {tensor_N_D.dtype}")
    if tensor_N_D.numel() and not bool(torch.isfinite(tensor_N_D).all()):
        bad = int((~torch.isfinite(tensor_N_D)).any(dim=1).nonzero()[0, 0])
        raise ValueError(f"{name} has NaN or infinite values (first in row {bad})")
    return tensor_N_D


def predicted_labels(probs_N_C: torch.Tensor) -> torch.Tensor:
    """argmax_c p(c|x) with ties going to the lowest class, stated explicitly rather than left to
    whichever index a backend's argmax returns for equal values."""
    num_classes = probs_N_C.shape[1]
    classes_C = torch.arange(num_classes, device=probs_N_C.device)
    is_max_N_C = probs_N_C == probs_N_C.max(dim=1, keepdim=True).values
    return torch.where(is_max_N_C, classes_C, num_classes).min(dim=1).values


def gradient_embeddings(features_N_D: torch.Tensor, probs_N_C: torch.Tensor) -> torch.Tensor:
    """`embeddings_N_(C*D)`: row n is (p(c|x_n) - 1[c = y_hat_n]) * h(x_n) for c = 0..C-1,
    concatenated class by class.

    This is the gradient of the cross-entropy at the model's own predicted label y_hat (argmax
    of `probs_N_C`, ties to the lowest class) with respect to the last linear layer's weight
    W_C_D, flattened row-major like `W.flatten()`: its norm is large where the model would change
    most if the guess were confirmed (uncertainty), and its direction carries h (diversity).
    The bias gradient is left out as in the paper. dtype: that of `features_N_D`; memory N*C*D.
    """
    _check_matrix("features_N_D", features_N_D)
    _check_matrix("probs_N_C", probs_N_C, "N x C")
    if features_N_D.shape[0] != probs_N_C.shape[0]:
        raise ValueError(
            f"features_N_D has {features_N_D.shape[0]} rows but probs_N_C has "
            f"{probs_N_C.shape[0]}; they must describe the same inputs"
        )
    if probs_N_C.shape[1] < 1:
        raise ValueError("probs_N_C needs at least one class column")
    if probs_N_C.numel():
        if bool((probs_N_C < 0).any()) or bool((probs_N_C > 1).any()):
            raise ValueError("probs_N_C must be probabilities in [0, 1] (not log-probs or logits)")
        sums_N = probs_N_C.double().sum(dim=1)
        worst = float((sums_N - 1).abs().max())
        if worst > PROB_SUM_TOLERANCE:
            raise ValueError(f"probs_N_C rows must sum to 1; one is off by {worst:.3g}")
    labels_N = predicted_labels(probs_N_C)
    residual_N_C = probs_N_C.to(features_N_D.dtype).clone()
    residual_N_C[torch.arange(len(labels_N), device=labels_N.device), labels_N] -= 1
    embeddings_N_C_D = residual_N_C.unsqueeze(2) * features_N_D.unsqueeze(1)
    return embeddings_N_C_D.reshape(features_N_D.shape[0], -1)


def squared_distances_to(embeddings_N_E: torch.Tensor, center_E: torch.Tensor) -> torch.Tensor:
    """Float64 ||e_n - center||^2 for every row, by explicit differences (exact up to rounding
    and never negative, unlike the ||a||^2 + ||b||^2 - 2ab expansion), in blocks of about
    DISTANCE_BLOCK_ELEMENTS elements."""
    n, e = embeddings_N_E.shape
    out_N = torch.empty(n, dtype=torch.float64, device=embeddings_N_E.device)
    center_E = center_E.to(device=embeddings_N_E.device, dtype=torch.float64)
    rows = max(1, DISTANCE_BLOCK_ELEMENTS // max(e, 1))
    for start in range(0, n, rows):
        # A float64 copy of the block, then in-place ops: one temporary per block.
        block_B_E = embeddings_N_E[start : start + rows].to(torch.float64, copy=True)
        block_B_E.sub_(center_E).square_()
        torch.sum(block_B_E, dim=1, out=out_N[start : start + block_B_E.shape[0]])
    return out_N


def d2_pick(weights_N: torch.Tensor, u: float) -> int:
    """Index drawn with probability weights_n / sum(weights) for a uniform u in [0, 1): the first
    n whose cumulative weight exceeds u * total. Zero-weight rows are never picked (their
    cumulative weight equals their predecessor's) and the total is the last cumulative weight,
    so the index always exists."""
    cumulative_N = torch.cumsum(weights_N, dim=0)
    threshold = torch.as_tensor([u * float(cumulative_N[-1])], dtype=cumulative_N.dtype)
    index = int(torch.searchsorted(cumulative_N, threshold.to(cumulative_N.device), right=True))
    return min(index, weights_N.shape[0] - 1)


def _uniform(generator: torch.Generator) -> float:
    return float(torch.rand(1, generator=generator, dtype=torch.float64, device=generator.device))


def badge(
    embeddings_N_E: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    return_probabilities: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Distinct indices (LongTensor, in pick order) of the k-means++ seeding of the embeddings.

    First the row with the largest norm (ties: lowest index; it is the most uncertain point in
    gradient-embedding terms, as in the reference implementation), then each next row drawn
    with probability proportional to its squared distance to the nearest chosen row (D^2
    sampling), one uniform from `generator` per pick. Rows at distance 0 (duplicates of chosen
    ones) are never drawn unless every remaining row is at distance 0; then the pick is uniform
    over the remaining rows. `batch_size` > N returns all N rows.

    The min-distance vector is updated with one new center per pick, so memory is O(N) beyond
    the embeddings and time O(batch_size * N * E).

    `return_probabilities=True` also returns float64 `probabilities_b`: the probability each pick
    had at its step (1 for the first), the number a ledger records as the selection probability.
    """
    _check_matrix("embeddings_N_E", embeddings_N_E, "N x E")
    batch_size = _check_batch_size(batch_size)
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    n = embeddings_N_E.shape[0]
    picks = min(batch_size, n)
    device = embeddings_N_E.device
    chosen: list[int] = []
    probabilities: list[float] = []
    if picks:
        norms_N = embeddings_N_E.to(torch.float64).square().sum(dim=1)
        first = int((norms_N == norms_N.max()).nonzero()[0, 0])
        chosen.append(first)
        probabilities.append(1.0)
        min_d2_N = squared_distances_to(embeddings_N_E, embeddings_N_E[first])
        available_N = torch.ones(n, dtype=torch.bool, device=device)
        available_N[first] = False
    while len(chosen) < picks:
        weights_N = torch.where(available_N, min_d2_N, 0.0)
        total = float(weights_N.sum())
        u = _uniform(generator)
        if total > 0:
            pick = d2_pick(weights_N, u)
            probability = float(weights_N[pick]) / total
        else:
            remaining = available_N.nonzero().flatten()
            pick = int(remaining[min(int(u * remaining.numel()), remaining.numel() - 1)])
            probability = 1.0 / remaining.numel()
        chosen.append(pick)
        probabilities.append(probability)
        available_N[pick] = False
        if len(chosen) < picks:
            distances_N = squared_distances_to(embeddings_N_E, embeddings_N_E[pick])
            torch.minimum(min_d2_N, distances_N, out=min_d2_N)
    indices = torch.tensor(chosen, dtype=torch.long)
    if return_probabilities:
        return indices, torch.tensor(probabilities, dtype=torch.float64)
    return indices


# ------------------------------------------------------------------------------ strategies
class Badge(Strategy):
    """`badge`: k-means++ seeding on the gradient embeddings of every unlabeled sample at its
    predicted label; each pick's probability at its step is recorded, no score or key."""

    name = "badge"
    needs = frozenset({EMBEDDINGS})
    # In shards: each shard's own seeding proposes candidates, the merge seeds over them
    # (approximate: baldflow.acquisition.diverse_shards, docs/acquisition.md).
    needs_in_shards = frozenset({SEEDING_CANDIDATES})
    exact_in_shards = False

    def select(
        self, inputs: SelectionInputs, batch_size: int, params: Mapping[str, Any], noise: Noise
    ) -> Selection:
        ids_N = inputs.sample_ids
        assert ids_N is not None
        rows, probabilities = badge(
            gradient_embeddings(inputs.features_N_D, inputs.probs_N_C), batch_size,
            noise.generator, return_probabilities=True,
        )  # fmt: skip
        return Selection([ids_N[int(r)] for r in rows], probabilities=probabilities)
