"""Training a round's model on its labeled set, and evaluating it on the test split."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import torch

from baldflow.config import Config
from baldflow.data.pool import CampaignPool
from baldflow.seeds import STREAM_EVALUATE, STREAM_TRAIN, generator_for


@dataclasses.dataclass
class Trained:
    model: Any  # baldflow.models.BayesianModule
    train_size: int
    epochs: int | None
    best_val_accuracy: float | None
    seconds: float


def train(
    config: Config, data: CampaignPool, labeled: Sequence[tuple[str, int]], seed: int
) -> Trained:
    """Fit a fresh model on the labeled set (labels as the oracle gave them)."""
    from baldflow.models import build_model
    from baldflow.training import TrainConfig, fit

    start = time.perf_counter()
    generator = generator_for(seed, STREAM_TRAIN)
    model = build_model(
        config.model.name,
        data.input_shape,
        data.num_classes,
        dropout=config.model.dropout,
        seed=int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item()),
    )
    # Training reads only the labeled samples, by id (on disk: a read of those rows).
    train_x = data.inputs([sid for sid, _ in labeled])
    train_y = torch.tensor([int(label) for _, label in labeled], dtype=torch.long)
    t = config.training
    train_config = TrainConfig(
        learning_rate=t.learning_rate,
        batch_size=t.batch_size,
        epoch_samples=t.epoch_samples,
        max_epochs=t.max_epochs,
        patience=t.patience,
        eval_mc_samples=t.eval_mc_samples,
        weight_decay=t.weight_decay,
        device=t.device,
        mixed_precision=t.mixed_precision,
    )
    val_x, val_y = data.evaluation_set("val")
    result = fit(model, train_x, train_y, val_x, val_y, train_config, generator)
    return Trained(
        model=model,
        train_size=len(labeled),
        epochs=getattr(result, "epochs", None),
        best_val_accuracy=getattr(result, "best_val_accuracy", None),
        seconds=time.perf_counter() - start,
    )


def evaluate(config: Config, data: CampaignPool, model: Any, seed: int) -> dict[str, float]:
    from baldflow.training import evaluate as evaluate_model

    start = time.perf_counter()
    test_x, test_y = data.evaluation_set("test")
    result = evaluate_model(
        model,
        test_x,
        test_y,
        config.training.eval_mc_samples,
        generator_for(seed, STREAM_EVALUATE),
        mixed_precision=config.training.mixed_precision,
    )
    return {
        "test_accuracy": float(result["accuracy"]),
        "test_nll": float(result["nll"]),
        "seconds": time.perf_counter() - start,
    }
