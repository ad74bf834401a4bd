"""CoreSet (Sener & Savarese, ICLR 2018): greedy k-center selection on penultimate features.

Pure tensor maths: the features come from `baldflow.inference.embed_pool` (or `model.embed`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from baldflow.acquisition.badge import (
    _check_batch_size,
    _check_matrix,
    squared_distances_to,
)
from baldflow.acquisition.strategy import (
    COVER_CANDIDATES,
    EMBEDDINGS,
    LABELED_EMBEDDINGS,
    Noise,
    Selection,
    SelectionInputs,
    Strategy,
)

# Elements of the largest temporary difference block against the labeled set.
BLOCK_ELEMENTS = 2**21


def _min_squared_distances(
    features_N_D: torch.Tensor, labeled_features_L_D: torch.Tensor
) -> torch.Tensor:
    """Float64 min over labeled rows of ||f_n - l||^2, by explicit differences in blocks of about
    BLOCK_ELEMENTS (16 MB of float64) so that neither N*L nor N*L*D is ever held at once."""
    n, d = features_N_D.shape
    min_d2_N = torch.full((n,), float("inf"), dtype=torch.float64, device=features_N_D.device)
    rows = 256
    cols = max(1, BLOCK_ELEMENTS // max(d * rows, 1))
    for start in range(0, n, rows):
        block_B_D = features_N_D[start : start + rows].to(torch.float64)
        best_B = min_d2_N[start : start + block_B_D.shape[0]]
        for lstart in range(0, labeled_features_L_D.shape[0], cols):
            labeled_M_D = labeled_features_L_D[lstart : lstart + cols].to(
                device=block_B_D.device, dtype=torch.float64
            )
            d2_B_M = (block_B_D.unsqueeze(1) - labeled_M_D.unsqueeze(0)).square().sum(dim=2)
            torch.minimum(best_B, d2_B_M.min(dim=1).values, out=best_B)
    return min_d2_N


def _first_max(values_N: torch.Tensor) -> int:
    """Index of the largest value, ties to the lowest index (stated, not left to argmax)."""
    return int((values_N == values_N.max()).nonzero()[0, 0])


def coreset(
    features_N_D: torch.Tensor,
    batch_size: int,
    labeled_features_L_D: torch.Tensor | None = None,
) -> torch.Tensor:
    """Distinct pool indices (LongTensor, in pick order) of greedy k-center selection.

    Each pick is the pool row farthest (Euclidean) from its nearest labeled-or-already-chosen
    row, ties to the lowest index: the 2-approximation of the k-center cover that CoreSet uses.
    With no labeled rows (None or 0 rows) there is nothing to be far from, so the first pick is
    the row farthest from the pool's mean, a deterministic start that, like the later picks,
    favours the edge of the data. Rows equal to a labeled or chosen row are taken only when
    every remaining row is; then the lowest index goes first. `batch_size` > N returns all rows.

    The min-distance vector (float64, O(N)) is updated with one new center per pick: time
    O(N * L * D) for the labeled set once, then O(batch_size * N * D).
    """
    _check_matrix("features_N_D", features_N_D)
    batch_size = _check_batch_size(batch_size)
    n, d = features_N_D.shape
    has_labeled = labeled_features_L_D is not None and labeled_features_L_D.shape[0] > 0
    if labeled_features_L_D is not None:
        _check_matrix("labeled_features_L_D", labeled_features_L_D, "L x D")
        if labeled_features_L_D.shape[1] != d:
            raise ValueError(
                f"labeled_features_L_D has {labeled_features_L_D.shape[1]} features per row but "
                f"features_N_D has {d}; both must come from the same embedding"
            )
    picks = min(batch_size, n)
    if picks == 0:
        return torch.empty(0, dtype=torch.long)
    if has_labeled:
        min_d2_N = _min_squared_distances(features_N_D, labeled_features_L_D)
        first = _first_max(min_d2_N)
    else:
        # The mean only places the first center; distances are then measured from that center.
        mean_D = features_N_D.to(torch.float64).mean(dim=0)
        first = _first_max(squared_distances_to(features_N_D, mean_D))
        min_d2_N = torch.full((n,), float("inf"), dtype=torch.float64, device=features_N_D.device)
    chosen = [first]
    while len(chosen) < picks:
        distances_N = squared_distances_to(features_N_D, features_N_D[chosen[-1]])
        torch.minimum(min_d2_N, distances_N, out=min_d2_N)
        # Below every real distance (>= 0), so a chosen row is never taken twice.
        min_d2_N[chosen] = -1.0
        chosen.append(_first_max(min_d2_N))
    return torch.tensor(chosen, dtype=torch.long)


# ------------------------------------------------------------------------------ strategies
class CoreSet(Strategy):
    """`coreset`: greedy k-center on every unlabeled sample's penultimate features, away from
    the labeled set's; deterministic, so nothing but the picks is recorded."""

    name = "coreset"
    needs = frozenset({EMBEDDINGS, LABELED_EMBEDDINGS})
    # In shards: passes until every pick is certified, the batch of the whole pool
    # (baldflow.acquisition.diverse_shards).
    needs_in_shards = frozenset({COVER_CANDIDATES})

    def select(
        self, inputs: SelectionInputs, batch_size: int, params: Mapping[str, Any], noise: Noise
    ) -> Selection:
        ids_N = inputs.sample_ids
        assert ids_N is not None
        rows = coreset(inputs.features_N_D, batch_size, inputs.labeled_features_L_D)
        return Selection([ids_N[int(r)] for r in rows])
