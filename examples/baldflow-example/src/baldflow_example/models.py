"""The model plug-in: a residual MLP for tabular inputs, its one dropout after the residual
blocks so that baldflow's torch.fx split keeps the blocks in the part run once."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

OPTIONS = {"width": 64, "blocks": 2, "dropout": 0.3}


class ResidualBlock(nn.Module):
    """x + Linear(ReLU(LayerNorm(x))): a pre-norm residual block of constant width."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.linear = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.linear(torch.relu(self.norm(x)))


class ResidualMLP(nn.Module):
    """Flatten -> Linear(width) -> `blocks` residual blocks -> ReLU -> Dropout(p) -> Linear(C)."""

    def __init__(self, in_features: int, num_classes: int, width: int, blocks: int, dropout: float):
        super().__init__()
        self.flatten = nn.Flatten()
        self.stem = nn.Linear(in_features, width)
        self.blocks = nn.Sequential(*(ResidualBlock(width) for _ in range(blocks)))
        self.activation = nn.ReLU()
        # The only dropout: MC dropout samples here, so everything before it (stem and blocks)
        # runs once per input and only the classifier runs K times.
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.activation(self.blocks(self.stem(self.flatten(x))))
        return self.classifier(self.dropout(features))


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"model.options.{name} must be an integer >= 1, got {value!r}")
    return value


def residual_mlp(
    input_shape: tuple[int, ...], num_classes: int, options: Mapping[str, Any]
) -> nn.Module:
    """baldflow's model seam: (input_shape, num_classes, model.options) -> nn.Module mapping
    x [B, *input_shape] to logits [B, num_classes]. Options: `width` (64), `blocks` (2),
    `dropout` (0.3, in (0, 1): MC dropout needs a layer that drops something)."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(
            f"unknown model.options {', '.join(unknown)}; this model takes {', '.join(OPTIONS)}"
        )
    settings = {**OPTIONS, **options}
    width = _positive_int("width", settings["width"])
    blocks = _positive_int("blocks", settings["blocks"])
    dropout = float(settings["dropout"])
    if not 0.0 < dropout < 1.0:
        raise ValueError(f"model.options.dropout must be in (0, 1), got {dropout!r}")
    in_features = math.prod(input_shape)
    return ResidualMLP(in_features, int(num_classes), width, blocks, dropout)
