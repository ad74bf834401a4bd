"""The trainer plug-in: AdamW on a class-weighted cross-entropy with a cosine learning-rate
schedule over a fixed number of epochs (no early stopping)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.functional import cross_entropy

from baldflow.training import LabeledPart

# Its own options (training.options), with their defaults.
OWN_OPTIONS = {"epochs": 60, "min_lr_ratio": 0.05, "batch_size": 32}
# The training section's fields, which a campaign passes every trainer; used: learning_rate,
# weight_decay and batch_size; the others belong to baldflow's own loop.
TRAINING_FIELDS = {
    "learning_rate", "batch_size", "epoch_samples", "max_epochs", "patience",
    "eval_mc_samples", "weight_decay", "mixed_precision",
}  # fmt: skip


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """n / (present classes * count_c) per class: each class present in the labeled set weighs
    the same in the loss however few of its samples there are; an absent class weighs 0."""
    counts_C = torch.bincount(labels, minlength=num_classes).to(torch.float32)
    present = int((counts_C > 0).sum())
    weights_C = labels.numel() / (present * counts_C.clamp_min(1.0))
    return torch.where(counts_C > 0, weights_C, torch.zeros_like(weights_C))


def _settings(options: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(OWN_OPTIONS) - TRAINING_FIELDS)
    if unknown:
        raise ValueError(
            f"training.options.{unknown[0]} is not an option of this trainer (its options: "
            f"{', '.join(sorted(OWN_OPTIONS))}, with learning_rate and weight_decay)"
        )
    settings = {**OWN_OPTIONS, "learning_rate": 1e-3, "weight_decay": 0.0, **options}
    for name in ("epochs", "batch_size"):
        value = settings[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"training.options.{name} must be an integer >= 1, got {value!r}")
    if not 0.0 <= float(settings["min_lr_ratio"]) <= 1.0:
        raise ValueError(
            f"training.options.min_lr_ratio must be in [0, 1], got {settings['min_lr_ratio']!r}"
        )
    return settings


@torch.no_grad()
def _accuracy(model: nn.Module, part: LabeledPart, device: torch.device) -> float:
    model.eval()  # dropout off: the deterministic network's accuracy
    logits_B_C = model(part.x.to(device))
    return float((logits_B_C.argmax(-1) == part.y.to(device)).float().mean())


def weighted_cosine(
    model: nn.Module,
    train: LabeledPart,
    val: LabeledPart,
    options: dict[str, Any],
    generator: torch.Generator,
    device: torch.device,
) -> tuple[nn.Module, dict[str, float]]:
    """baldflow's trainer seam: train `model` (logits out, dropout on in train mode) on
    `train` and return it with its metrics. Every shuffle draws from `generator` (dropout masks
    draw from the generator baldflow set on the model), so a CPU round repeats exactly."""
    settings = _settings(options)
    epochs, batch_size = settings["epochs"], settings["batch_size"]
    learning_rate = float(settings["learning_rate"])
    x_N = train.x.to(device)
    y_N = train.y.to(device=device, dtype=torch.long)
    n = len(train)
    model.eval()
    with torch.no_grad():  # the number of classes, from one deterministic forward pass
        num_classes = model(x_N[:1]).shape[-1]
    weights_C = class_weights(y_N.cpu(), num_classes).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=learning_rate, weight_decay=float(settings["weight_decay"])
    )
    steps = epochs * math.ceil(n / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=steps, eta_min=learning_rate * float(settings["min_lr_ratio"])
    )
    model.train()
    epoch_loss = math.nan
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(device)
        total = 0.0
        for batch in order.split(batch_size):
            loss = cross_entropy(model(x_N[batch]), y_N[batch], weight=weights_C)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * batch.numel()
        epoch_loss = total / n
    metrics = {"final_loss": epoch_loss, "epochs": float(epochs)}
    # An empty validation part has no accuracy: the metric is left out rather than NaN.
    if len(val):
        metrics["val_accuracy"] = _accuracy(model, val, device)
    model.eval()
    return model, metrics
