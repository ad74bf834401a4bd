"""Model plug-ins for benchmarks on cached features (a frozen backbone's embeddings).

`feature_head` is the import string `heads:feature_head` when `benchmarks/` is on PYTHONPATH:
Linear(D, hidden) -> ReLU -> Dropout(p) -> Linear(hidden, C). baldflow turns its dropout into
consistent MC dropout and traces the split before it, so the first linear layer and the ReLU
run once per sample and only the dropout and the last linear layer run K times.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn


def feature_head(
    input_shape: Sequence[int], num_classes: int, options: Mapping[str, Any]
) -> nn.Module:
    """The head on flat cached features; options: `hidden` (256), `dropout` (0.5)."""
    in_features = math.prod(int(s) for s in input_shape)
    hidden = int(options.get("hidden", 256))
    p = float(options.get("dropout", 0.5))
    layers: list[nn.Module] = [] if len(input_shape) == 1 else [nn.Flatten()]
    layers += [
        nn.Linear(in_features, hidden),
        nn.ReLU(),
        nn.Dropout(p),
        nn.Linear(hidden, int(num_classes)),
    ]
    return nn.Sequential(*layers)
