"""The compute steps of an active-learning round as plain functions (no Prefect, no I/O).

The Prefect tasks in tasks/ wrap these; tests and notebooks can call them directly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from baldflow.config import Config

# Independent random streams of one round, so that e.g. changing the number of MC samples for
# scoring does not change how the model was trained.
STREAM_TRAIN = 0
STREAM_EVALUATE = 1
STREAM_SCORE = 2
STREAM_SELECT = 3


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run a block with `count` torch CPU threads (0 leaves torch's choice), then restore."""
    before = torch.get_num_threads()
    if count > 0:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def round_seed(campaign_seed: int, round_index: int) -> int:
    """The seed of a round, derived from the campaign seed and the round number only."""
    state = np.random.SeedSequence([int(campaign_seed), int(round_index)]).generate_state(1)
    return int(state[0])


def generator_for(seed: int, stream: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), int(stream)]).generate_state(2)
    value = (int(state[0]) << 32) | int(state[1])
    return torch.Generator().manual_seed(value)


def save_state(state: dict[str, Any], path: str | Path) -> Path:
    """Save a model's state_dict atomically (a killed write must not leave half a file)."""
    from baldflow.models.weights import save_weights

    return save_weights(state, path)


def load_state(path: str | Path) -> dict[str, Any]:
    """A state_dict saved by save_state, on the CPU whatever device it was saved from."""
    from baldflow.models.weights import load_weights

    return load_weights(path)


@dataclasses.dataclass
class CampaignData:
    """A prepared pool with a lookup from sample id to row."""

    splits: Any  # baldflow.data.DataSplits
    initial_ids: list[str]
    row_of: dict[str, int]

    @property
    def pool_ids(self) -> list[str]:
        return list(self.splits.pool_ids)

    def rows(self, sample_ids: Sequence[str]) -> torch.Tensor:
        return torch.tensor([self.row_of[sid] for sid in sample_ids], dtype=torch.long)

    def images(self, pending: Any) -> torch.Tensor | None:
        """The pool images of a handed-off batch, for its contact sheet (None unless images)."""
        from baldflow.figures.thumbnails import is_image_batch

        if not pending.sample_ids:
            return None
        images = self.splits.pool_x[self.rows(pending.sample_ids)]
        return images if is_image_batch(images) else None

    def unlabeled_rows(self, labeled_ids: set[str]) -> torch.Tensor:
        keep = [i for i, sid in enumerate(self.splits.pool_ids) if sid not in labeled_ids]
        return torch.tensor(keep, dtype=torch.long)


def prepare_data(config: Config) -> CampaignData:
    from baldflow.data import prepare_pool

    splits, initial_ids = prepare_pool(
        config.data.source,
        repeat=config.data.repeat,
        noise_std=config.data.noise_std,
        initial_per_class=config.campaign.initial_per_class,
        seed=config.campaign.seed,
        root=config.data.root,
        **config.data.options,
    )
    row_of = {sid: i for i, sid in enumerate(splits.pool_ids)}
    if len(row_of) != len(splits.pool_ids):
        raise ValueError(f"data.source {config.data.source!r} gave duplicate sample ids")
    return CampaignData(splits, list(initial_ids), row_of)


@dataclasses.dataclass
class Trained:
    model: Any  # baldflow.models.BayesianModule
    train_size: int
    epochs: int | None
    best_val_accuracy: float | None
    seconds: float


def train(
    config: Config, data: CampaignData, labeled: Sequence[tuple[str, int]], seed: int
) -> Trained:
    """Fit a fresh model on the labeled set (labels as the oracle gave them)."""
    from baldflow.models import build_model
    from baldflow.training import TrainConfig, fit

    start = time.perf_counter()
    splits = data.splits
    generator = generator_for(seed, STREAM_TRAIN)
    model = build_model(
        config.model.name,
        splits.input_shape,
        splits.num_classes,
        dropout=config.model.dropout,
        seed=int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item()),
    )
    rows = data.rows([sid for sid, _ in labeled])
    train_x = splits.pool_x[rows]
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
    )
    result = fit(model, train_x, train_y, splits.val_x, splits.val_y, train_config, generator)
    return Trained(
        model=model,
        train_size=len(labeled),
        epochs=getattr(result, "epochs", None),
        best_val_accuracy=getattr(result, "best_val_accuracy", None),
        seconds=time.perf_counter() - start,
    )


def evaluate(config: Config, data: CampaignData, model: Any, seed: int) -> dict[str, float]:
    from baldflow.training import evaluate as evaluate_model

    start = time.perf_counter()
    result = evaluate_model(
        model,
        data.splits.test_x,
        data.splits.test_y,
        config.training.eval_mc_samples,
        generator_for(seed, STREAM_EVALUATE),
    )
    return {
        "test_accuracy": float(result["accuracy"]),
        "test_nll": float(result["nll"]),
        "seconds": time.perf_counter() - start,
    }


@dataclasses.dataclass
class PoolScores:
    """What scoring the unlabeled pool produced for the selection step."""

    rows_N: torch.Tensor  # noqa: N815 (pool rows of the unlabeled points that were scored)
    scores_N: torch.Tensor | None  # noqa: N815
    # BatchBALD only: the candidates (positions into rows_N) and their log-probs.
    candidates: torch.Tensor | None
    log_probs_M_K_C: torch.Tensor | None  # noqa: N815
    seconds: float


def score_pool(
    config: Config, data: CampaignData, model: Any, labeled_ids: set[str], seed: int
) -> PoolScores:
    """Score every unlabeled point (streamed); BatchBALD also keeps its top candidates."""
    from baldflow.acquisition.strategies import get_strategy
    from baldflow.inference import predict_log_probs
    from baldflow.inference import score_pool as stream_scores

    start = time.perf_counter()
    a = config.acquisition
    strategy = get_strategy(a.strategy)
    rows_N = data.unlabeled_rows(labeled_ids)
    if len(rows_N) == 0:
        return PoolScores(rows_N, None, None, None, time.perf_counter() - start)
    generator = generator_for(seed, STREAM_SCORE)
    pool_x = data.splits.pool_x[rows_N]
    if strategy.needs_log_probs:
        # BatchBALD's cost grows with the pool: preselect by BALD, keep log-probs of those only.
        bald_N = stream_scores(
            model, pool_x, "bald", a.mc_samples, generator, chunk_size=a.chunk_size
        )
        m = min(a.batchbald_candidates, len(rows_N))
        candidates = torch.topk(torch.as_tensor(bald_N), m).indices.sort().values
        log_probs = predict_log_probs(
            model, pool_x, a.mc_samples, generator, chunk_size=a.chunk_size, indices=candidates
        )
        return PoolScores(
            rows_N, torch.as_tensor(bald_N), candidates, log_probs, time.perf_counter() - start
        )
    if strategy.score is None:
        # Random needs no model output, only the size of the pool.
        return PoolScores(rows_N, None, None, None, time.perf_counter() - start)
    scores_N = stream_scores(
        model, pool_x, strategy.score, a.mc_samples, generator, chunk_size=a.chunk_size
    )
    return PoolScores(rows_N, torch.as_tensor(scores_N), None, None, time.perf_counter() - start)


@dataclasses.dataclass
class Selected:
    """The acquired batch, in pick order, with the reasons each sample was picked."""

    sample_ids: list[str]
    scores: list[float | None]
    probabilities: list[float | None]
    keys: list[float | None]
    requested: int
    note: str | None
    seconds: float


def _as_list(values: Any, n: int) -> list[float | None]:
    if values is None:
        return [None] * n
    out = []
    for v in torch.as_tensor(values).tolist():
        out.append(None if v is None or (isinstance(v, float) and not np.isfinite(v)) else float(v))
    return out


def select_batch(config: Config, data: CampaignData, scored: PoolScores, seed: int) -> Selected:
    """Pick the batch with the configured strategy; a short pool gives what is left."""
    from baldflow.acquisition.strategies import acquire, get_strategy

    start = time.perf_counter()
    a = config.acquisition
    strategy = get_strategy(a.strategy)
    remaining = len(scored.rows_N)
    size = min(a.batch_size, remaining)
    note = None
    if size < a.batch_size:
        note = (
            f"acquisition.batch_size is {a.batch_size} but only {remaining} unlabeled "
            f"sample(s) remain; taking {size}"
        )
    if size == 0:
        return Selected([], [], [], [], a.batch_size, note, time.perf_counter() - start)
    generator = generator_for(seed, STREAM_SELECT)
    if strategy.needs_log_probs:
        assert scored.candidates is not None and scored.log_probs_M_K_C is not None
        size = min(size, len(scored.candidates))
        result = acquire(
            strategy,
            size,
            log_probs_N_K_C=scored.log_probs_M_K_C,
            num_samples=a.batchbald_num_samples,
            generator=generator,
        )
        positions = scored.candidates[result.indices]
    else:
        result = acquire(
            strategy,
            size,
            scores_N=scored.scores_N,
            coldness=a.coldness,
            generator=generator,
            pool_size=remaining,
        )
        positions = result.indices
    rows = scored.rows_N[positions]
    ids = [data.splits.pool_ids[int(r)] for r in rows]
    n = len(ids)
    return Selected(
        sample_ids=ids,
        scores=_as_list(result.scores, n),
        probabilities=_as_list(result.probabilities, n),
        keys=_as_list(result.keys, n),
        requested=a.batch_size,
        note=note,
        seconds=time.perf_counter() - start,
    )
