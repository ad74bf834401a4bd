"""The Bayesian module: a deterministic prefix run once per input, a stochastic head run K times."""

from __future__ import annotations

import torch
from torch import nn

from baldflow.models.dropout import _ConsistentDropout


class BayesianModule(nn.Module):
    """An MC dropout network split into `prefix` (no dropout) and `head` (all the dropout).

    `forward(x_B_..., k)` runs `prefix` on the B inputs once, repeats its features K times and
    runs `head` on the B*K rows, returning `log_probs_B_K_C`. The split is where the scoring speed
    comes from: the expensive layers never see the K copies. `k = 0` is the deterministic pass
    (dropout off) and returns `[B, 1, C]`.

    Subclasses set `self.prefix`, `self.head` and `self.spec` (the keyword arguments of
    `build_model` that rebuild the architecture; weights come from `load_state_dict`).
    """

    prefix: nn.Module
    head: nn.Module
    spec: dict

    def dropout_layers(self) -> list[_ConsistentDropout]:
        return [m for m in self.modules() if isinstance(m, _ConsistentDropout)]

    def set_train_generator(self, generator: torch.Generator | None) -> None:
        """Generator for the fresh per-row masks of training-mode dropout (must live on the
        device the model runs on)."""
        for layer in self.dropout_layers():
            layer.train_generator = generator

    def resample_masks(self, k: int, generator: torch.Generator) -> None:
        """Draw a new set of K inference masks, used by every eval-mode forward with this k until
        the next call. One acquisition round calls this once per scoring pass."""
        if k < 1:
            raise ValueError(f"resample_masks needs k >= 1 MC samples, got {k}")
        for layer in self.dropout_layers():
            seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
            layer.set_mask_seed(k, seed)

    def forward(self, x: torch.Tensor, k: int = 0) -> torch.Tensor:
        if k < 0:
            raise ValueError(f"k (MC samples) must be >= 0, got {k}")
        features_B_F = self.prefix(x)
        B = features_B_F.shape[0]
        repeats = max(k, 1)
        # expand + reshape: row b * K + j is input b under mask j, the layout the dropout expects.
        features_BK_F = features_B_F.unsqueeze(1).expand(B, repeats, *features_B_F.shape[1:])
        features_BK_F = features_BK_F.reshape(B * repeats, *features_B_F.shape[1:])
        layers = self.dropout_layers()
        for layer in layers:
            layer.active_k = k
        try:
            logits_BK_C = self.head(features_BK_F)
        finally:
            for layer in layers:
                layer.active_k = 0
        log_probs_BK_C = torch.log_softmax(logits_BK_C, dim=-1)
        return log_probs_BK_C.view(B, repeats, -1)
