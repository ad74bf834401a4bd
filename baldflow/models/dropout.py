"""Consistent MC dropout: fresh masks per row in training, K fixed masks for a scoring pass."""

from __future__ import annotations

import torch
from torch import nn


class DropoutStateError(RuntimeError):
    """A dropout layer was asked for masks it cannot produce in its current state."""


class _ConsistentDropout(nn.Module):
    """Shared logic of the 1d (element-wise) and 2d (channel-wise) consistent dropout layers.

    The owning `BayesianModule` tells the layer how many MC samples the current forward pass
    carries (`active_k`); the input then has `B * K` rows laid out sample-major within each input
    (row `b * K + k` is input b under mask k).

    - training mode: every row gets an independent mask drawn from `train_generator`.
    - eval mode: row `b * K + k` gets mask k of a set of K masks fixed by `set_mask_seed`, so one
      scoring pass sees the same K posterior samples for every pool point and every chunk.
    - `active_k == 0`: identity (the deterministic, dropout-off pass; inverted dropout already
      keeps the expected activation).
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p must be in [0, 1), got {p!r}")
        self.p = p
        self.active_k = 0
        self.train_generator: torch.Generator | None = None
        self.mask_k = 0
        self.mask_seed: int | None = None
        self._masks: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def set_mask_seed(self, k: int, seed: int) -> None:
        """Fix the K inference masks. Masks are drawn lazily from `seed` once the feature shape
        is known; drawing from a private seeded generator keeps them identical on every device."""
        self.mask_k = int(k)
        self.mask_seed = int(seed)
        self._masks = None

    def _mask_shape(self, x: torch.Tensor, rows: int) -> tuple[int, ...]:
        raise NotImplementedError

    def _draw(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        keep = torch.rand(shape, generator=generator, device=generator.device) >= self.p
        return keep.to(torch.float32) / (1.0 - self.p)

    def _consistent_masks(self, x: torch.Tensor, k: int) -> torch.Tensor:
        if self.mask_seed is None:
            raise DropoutStateError(
                "consistent dropout has no inference masks: call "
                "model.resample_masks(k, generator) before an MC forward pass in eval mode"
            )
        if k != self.mask_k:
            raise DropoutStateError(
                f"masks were drawn for k={self.mask_k} MC samples but the forward pass asked for "
                f"k={k}; call model.resample_masks({k}, generator) first"
            )
        shape = self._mask_shape(x, k)
        if self._masks is None or tuple(self._masks.shape) != shape:
            # Always drawn on the CPU so the same seed gives the same masks on CPU and CUDA.
            generator = torch.Generator().manual_seed(self.mask_seed)
            self._masks = self._draw(shape, generator)
        if self._masks.device != x.device or self._masks.dtype != x.dtype:
            self._masks = self._masks.to(device=x.device, dtype=x.dtype)
        return self._masks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.active_k
        if k == 0 or self.p == 0.0:
            return x
        if self.training:
            if self.train_generator is None:
                raise DropoutStateError(
                    "training-mode dropout needs a generator (no global RNG): call "
                    "model.set_train_generator(generator) first"
                )
            masks = self._draw(self._mask_shape(x, x.shape[0]), self.train_generator)
            return x * masks.to(device=x.device, dtype=x.dtype)
        if x.shape[0] % k != 0:
            raise DropoutStateError(f"input has {x.shape[0]} rows, not a multiple of k={k}")
        masks_K_F = self._consistent_masks(x, k)
        x_B_K_F = x.reshape(x.shape[0] // k, k, *x.shape[1:])
        return (x_B_K_F * masks_K_F.unsqueeze(0)).reshape(x.shape)


class ConsistentDropout(_ConsistentDropout):
    """Element-wise dropout whose inference masks are shared across a whole scoring pass."""

    def _mask_shape(self, x: torch.Tensor, rows: int) -> tuple[int, ...]:
        return (rows, *x.shape[1:])


class ConsistentDropout2d(_ConsistentDropout):
    """Channel-wise dropout (whole feature maps) with inference masks shared across a pass."""

    def _mask_shape(self, x: torch.Tensor, rows: int) -> tuple[int, ...]:
        if x.ndim < 3:
            raise ValueError(
                f"ConsistentDropout2d needs input [rows, channels, *spatial], got shape "
                f"{tuple(x.shape)}"
            )
        return (rows, x.shape[1], *([1] * (x.ndim - 2)))
