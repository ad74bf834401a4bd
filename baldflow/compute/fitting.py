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
    seconds: float
    # What the trainer reported (logged to the round's MLflow run as trainer.<name>).
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def epochs(self) -> int | None:
        """The epochs the trainer says it ran (baldflow's loop does), else None."""
        epochs = self.metrics.get("epochs")
        return int(epochs) if epochs is not None else None


def model_part(config: Config) -> str:
    """Which part of the network a round trains: the whole, or the head on a frozen
    backbone's cached features."""
    return "head" if config.model.freeze == "backbone" else "whole"


def campaign_model(
    config: Config, input_shape: Sequence[int], num_classes: int, seed: int, *, part: str
) -> Any:
    """The campaign's network, initialised from `seed` (pretrained weights from model.weights
    where given)."""
    from baldflow.models.building import build_model

    m = config.model
    return build_model(
        m.name, input_shape, num_classes, dropout=m.dropout, seed=seed, options=m.options,
        weights=m.weights, head=m.head, head_dropout=m.head_dropout, part=part,
    )  # fmt: skip


def trainer_options(config: Config) -> dict[str, Any]:
    """The options the round's trainer gets: the training section's fields (learning_rate,
    batch_size, ...: baldflow's loop takes these and nothing else) with training.options, a
    plug-in trainer's own, over them."""
    from baldflow.training import BALDFLOW_LOOP_OPTIONS

    t = config.training
    return {**{name: getattr(t, name) for name in BALDFLOW_LOOP_OPTIONS}, **t.options}


def round_network(config: Config, data: CampaignPool, seed: int) -> Any:
    """The network a round trains, initialised from `seed`: the whole campaign network, or for
    a frozen backbone its head (the pool's inputs are then the cached features, and the
    network is rebuilt from the raw input shape)."""
    part = model_part(config)
    input_shape = data.raw_input_shape if part == "head" else data.input_shape
    return campaign_model(config, input_shape, data.num_classes, seed, part=part)


def check_model(config: Config, data: CampaignPool) -> str:
    """Build the campaign's network on the pool's shape (the build checks a plug-in's logits:
    one per class, finite) and say how it was split into the part run once and the part run
    K times."""
    model = round_network(config, data, 0)
    split = getattr(model, "split", "built-in")
    detail = getattr(model, "split_detail", "")
    return f"{config.model.name}: {split}" + (f" ({detail})" if detail else "")


def train(
    config: Config, data: CampaignPool, labeled: Sequence[tuple[str, int]], seed: int
) -> Trained:
    """Fit a fresh model on the labeled set (labels as the oracle gave them), with the
    campaign's trainer (baldflow's loop unless training.trainer names another)."""
    from baldflow.training import LabeledPart, resolve_device, run_trainer

    start = time.perf_counter()
    generator = generator_for(seed, STREAM_TRAIN)
    init_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())
    model = round_network(config, data, init_seed)
    ids = [sid for sid, _ in labeled]
    # Training reads only the labeled samples, by id (on disk: a read of those rows).
    train_part = LabeledPart(
        data.inputs(ids), torch.tensor([int(y) for _, y in labeled], dtype=torch.long), ids
    )
    val_x, val_y = data.evaluation_set("val")
    metrics = run_trainer(
        config.training.trainer,
        model,
        train_part,
        LabeledPart(val_x, val_y),
        trainer_options(config),
        generator,
        resolve_device(config.training.device),
    )
    return Trained(
        model=model, train_size=len(labeled), seconds=time.perf_counter() - start,
        metrics=metrics,
    )  # fmt: skip


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
