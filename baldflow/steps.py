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
STREAM_EVIDENCE = 4
STREAM_PREDICT = 5


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


def mixed_precision_note(config: Config) -> str | None:
    """What a run says once when training.mixed_precision is set but cannot apply (no CUDA
    device), or None: on the CPU the flag changes nothing, so the batch is the full-precision
    batch."""
    from baldflow.training import resolve_device

    if not config.training.mixed_precision:
        return None
    device = resolve_device(config.training.device)
    if device.type == "cuda":
        return None
    where = "the CPU" if device.type == "cpu" else str(device)
    note = f"training.mixed_precision applies on CUDA only; this run uses {where}, full precision"
    if config.scale.runner == "dask" and config.training.device == "auto":
        # `auto` resolves on each worker: workers that have a GPU still use bfloat16 there.
        note += " here (Dask workers with a CUDA device use it)"
    return note


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
    """A prepared pool: in memory (`splits`, with a lookup from sample id to row), or on disk
    (`disk`, a `data.disk_source.DiskSource` whose pool is read by rows and never loaded)."""

    splits: Any  # baldflow.data.DataSplits, or None for a pool on disk
    initial_ids: list[str]
    row_of: dict[str, int]
    disk: Any = None  # baldflow.data.disk_source.DiskSource
    # A pool on disk: `data.ondisk.manifest` of it, versioned with every round.
    pool_manifest: dict | None = None

    @property
    def on_disk(self) -> bool:
        return self.disk is not None

    @property
    def pool_size(self) -> int:
        return self.disk.count if self.on_disk else len(self.splits.pool_ids)

    @property
    def pool_ids(self) -> list[str]:
        if self.on_disk:
            return self.disk.pool.ids(0, self.disk.count)
        return list(self.splits.pool_ids)

    @property
    def class_names(self) -> list[str]:
        return list(self.disk.class_names if self.on_disk else self.splits.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.disk.input_shape if self.on_disk else self.splits.input_shape)

    @property
    def num_classes(self) -> int:
        return self.disk.num_classes if self.on_disk else self.splits.num_classes

    def evaluation_set(self, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of the `val` or `test` split."""
        source = self.disk if self.on_disk else self.splits
        return getattr(source, f"{which}_x"), getattr(source, f"{which}_y")

    def rows(self, sample_ids: Sequence[str]) -> torch.Tensor:
        return torch.tensor([self.row_of[sid] for sid in sample_ids], dtype=torch.long)

    def inputs(self, sample_ids: Sequence[str]) -> torch.Tensor:
        """The model inputs of these pool samples, in this order (read by id on disk)."""
        if self.on_disk:
            return self.disk.pool.rows_by_ids(list(sample_ids))
        return self.splits.pool_x[self.rows(sample_ids)]

    def images(self, pending: Any) -> torch.Tensor | None:
        """The pool images of a handed-off batch, for its contact sheet (None unless images)."""
        from baldflow.figures.thumbnails import is_image_batch

        if not pending.sample_ids:
            return None
        images = self.inputs(pending.sample_ids)
        return images if is_image_batch(images) else None

    def unlabeled_rows(self, labeled_ids: set[str]) -> torch.Tensor:
        keep = [i for i, sid in enumerate(self.splits.pool_ids) if sid not in labeled_ids]
        return torch.tensor(keep, dtype=torch.long)


def prepare_data(config: Config) -> CampaignData:
    from baldflow.data.disk_source import DISK_SOURCE

    if config.data.source == DISK_SOURCE:
        return _prepare_disk_data(config)
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


def _prepare_disk_data(config: Config) -> CampaignData:
    """A pool larger than memory: opened, never loaded; ids are looked up on disk."""
    from baldflow.data.disk_source import open_disk_source
    from baldflow.data.splits import DataSourceError

    d = config.data
    if d.root is None:
        raise DataSourceError(
            "data.source 'disk' needs data.root: a directory with pool/, val/ and test/ "
            "(python benchmarks/make_pool.py --campaign-source --out DIR builds one)"
        )
    if d.repeat != 1 or d.noise_std != 0.0 or d.options:
        raise DataSourceError(
            "data.source 'disk' reads the pool as written: data.repeat, data.noise_std and "
            "data.options do not apply (write the variant you want as its own pool)"
        )
    source = open_disk_source(
        d.root, initial_per_class=config.campaign.initial_per_class, seed=config.campaign.seed
    )
    from baldflow.data.ondisk import cached_manifest

    return CampaignData(
        None, list(source.initial_ids), {}, disk=source, pool_manifest=cached_manifest(source.pool)
    )


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


def evaluate(config: Config, data: CampaignData, model: Any, seed: int) -> dict[str, float]:
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


def batch_predictions(
    config: Config, data: CampaignData, model: Any, sample_ids: Sequence[str], seed: int
) -> dict[str, list[float]]:
    """The model's mean predictive distribution (over `eval_mc_samples` dropout masks) for
    each sample of a batch: the guess labelers see in Label Studio."""
    from baldflow.inference import predict_log_probs

    if not sample_ids:
        return {}
    log_probs = predict_log_probs(
        model,
        data.inputs(sample_ids),
        config.training.eval_mc_samples,
        generator_for(seed, STREAM_PREDICT),
        mixed_precision=config.training.mixed_precision,
    )
    probs = log_probs.exp().mean(dim=1).tolist()
    return {sid: [round(p, 6) for p in row] for sid, row in zip(sample_ids, probs, strict=True)}


def selection_seed(seed: int) -> int:
    """The seed of the round's per-sample selection noise (`acquisition.sharded.id_gumbel`):
    its own stream of the round seed, so the noise is the same whoever scores which shard."""
    state = np.random.SeedSequence([int(seed), STREAM_SELECT]).generate_state(2)
    return (int(state[0]) << 32) | int(state[1])


@dataclasses.dataclass(frozen=True)
class ScoringPlan:
    """What a shard (or the whole pool in one process) computes: the score, K, the masks'
    seed, and the cut of its candidates. BatchBALD's plan is its BALD preselection: the top
    `batchbald_candidates` by BALD, whose joint scoring happens once they are merged."""

    score: str | None  # None: random, no model pass
    mc_samples: int
    mask_seed: int
    batch_size: int
    mode: str
    coldness: float
    selection_seed: int
    chunk_size: int
    joint: bool  # BatchBALD: the candidates go on to the joint (batch) scoring
    kind: str = "scored"  # the strategy's kind (acquisition.strategies.KINDS)
    epig_targets: int = 100
    # training.mixed_precision: bfloat16 autocast of the model passes on CUDA, none elsewhere.
    mixed_precision: bool = False

    @property
    def whole_pool(self) -> bool:
        from baldflow.acquisition.strategies import WHOLE_POOL_KINDS

        return self.kind in WHOLE_POOL_KINDS


def scoring_plan(config: Config, seed: int) -> ScoringPlan:
    from baldflow.acquisition.strategies import get_strategy

    a = config.acquisition
    strategy = get_strategy(a.strategy)
    common = {
        "mc_samples": a.mc_samples, "mask_seed": seed, "chunk_size": a.chunk_size,
        "kind": strategy.kind, "epig_targets": a.epig_targets,
        "selection_seed": selection_seed(seed),
        "mixed_precision": config.training.mixed_precision,
    }  # fmt: skip
    if strategy.needs_log_probs:
        return ScoringPlan(
            "bald", batch_size=a.batchbald_candidates, mode="topk", coldness=1.0, joint=True,
            **common,
        )  # fmt: skip
    return ScoringPlan(
        strategy.score, batch_size=a.batch_size, mode=strategy.mode or "topk",
        coldness=a.coldness, joint=False, **common,
    )  # fmt: skip


@dataclasses.dataclass
class PoolScores:
    """What scoring the unlabeled pool produced for the selection step: one summary per shard
    (one for a pool scored in this process), never the N scores themselves."""

    remaining: int  # unlabeled samples that were scored
    summaries: list  # acquisition.picks.ShardSummary, one per shard
    seconds: float
    shards: int = 1
    # Softrank only: the pool's sorted scores (a pick's weight is its rank in the pool).
    sorted_scores: torch.Tensor | None = None
    # BatchBALD only: the BALD preselection (by id) and their joint log-probs.
    candidate_ids: list[str] | None = None
    log_probs_M_K_C: torch.Tensor | None = None  # noqa: N815
    # A pool scored in this process: every unlabeled id with its score (for the round's score
    # table, and for annealed batches), or its embedding and predictive (badge), and the
    # labeled set's embeddings (coreset).
    sample_ids: list[str] | None = None
    scores_N: torch.Tensor | None = None  # noqa: N815
    features_N_D: torch.Tensor | None = None  # noqa: N815
    probs_N_C: torch.Tensor | None = None  # noqa: N815
    labeled_features_L_D: torch.Tensor | None = None  # noqa: N815
    # A pool scored in shards: (pool directory, shard score files directory, row ranges), from
    # which the round's score table is written shard by shard.
    shard_files: tuple[str, str, list[tuple[int, int]]] | None = None


def summarise_scores(
    plan: ScoringPlan, scores_n: torch.Tensor, sample_ids: Sequence[str], pool_scores=None
):
    """A shard's (or the whole pool's) summary under the plan: candidates + normaliser."""
    from baldflow.acquisition.picks import summarise_shard

    return summarise_shard(
        scores_n, sample_ids, plan.batch_size, plan.mode, plan.coldness, plan.selection_seed,
        pool_scores,
    )  # fmt: skip


def score_pool(
    config: Config, data: CampaignData, model: Any, labeled_ids: set[str], seed: int
) -> PoolScores:
    """Score every unlabeled point of an in-memory pool in this process (streamed)."""
    from baldflow.inference import score_pool as stream_scores

    start = time.perf_counter()
    plan = scoring_plan(config, seed)
    rows_N = data.unlabeled_rows(labeled_ids)
    ids = [data.splits.pool_ids[int(r)] for r in rows_N]
    if not ids:
        return PoolScores(0, [], time.perf_counter() - start)
    if plan.kind in ("badge", "coreset"):
        return _embedded_pool(plan, data, model, labeled_ids, rows_N, ids, start)
    if plan.score is None:  # random needs no model output, only the ids
        scores_N = torch.zeros(len(ids), dtype=torch.float64)
    else:
        score = plan.score
        if score == "epig":
            score = epig_score(plan, data, model, ids)
        scores_N = torch.as_tensor(
            stream_scores(
                model, data.splits.pool_x[rows_N], score, plan.mc_samples,
                generator_for(plan.mask_seed, STREAM_SCORE), chunk_size=plan.chunk_size,
                mixed_precision=plan.mixed_precision,
            )
        )  # fmt: skip
    return pool_scores_from(plan, data, model, ids, scores_N, start)


def pool_scores_from(
    plan: ScoringPlan,
    data: CampaignData,
    model: Any,
    ids: list[str],
    scores_N: torch.Tensor,
    start: float,
) -> PoolScores:
    """What the selection step needs from every unlabeled sample's score under `plan`."""
    if plan.whole_pool:  # annealed: picks one at a time, from every score
        return PoolScores(
            len(ids), [], time.perf_counter() - start, sample_ids=ids, scores_N=scores_N
        )
    sorted_scores = scores_N.sort().values if plan.mode == "softrank" else None
    summary = summarise_scores(plan, scores_N, ids, sorted_scores)
    # Every sample's score stays with the round for its score table (the audit trail).
    scored = PoolScores(
        len(ids), [summary], time.perf_counter() - start, 1, sorted_scores, sample_ids=ids,
        scores_N=None if plan.score is None else scores_N,
    )  # fmt: skip
    return with_joint_scores(scored, plan, data, model) if plan.joint else scored


def epig_score(plan: ScoringPlan, data: CampaignData, model: Any, unlabeled_ids) -> Any:
    """EPIG's score function for the round: the information gain about the predictions on
    `epig_targets` unlabeled samples chosen by a keyed hash of their ids (the same targets
    whoever scores which shard), predicted with the round's scoring masks."""
    from baldflow.acquisition.epig import epig_score_function, target_ids
    from baldflow.inference import predict_log_probs

    targets = target_ids(plan.mask_seed, unlabeled_ids, plan.epig_targets)
    log_probs_T_K_C = predict_log_probs(
        model, data.inputs(targets), plan.mc_samples,
        generator_for(plan.mask_seed, STREAM_SCORE), chunk_size=plan.chunk_size,
        mixed_precision=plan.mixed_precision,
    )  # fmt: skip
    return epig_score_function(log_probs_T_K_C)


def _embedded_pool(plan, data, model, labeled_ids, rows_N, ids, start) -> PoolScores:
    """BADGE and CoreSet: the pool's penultimate features (and predictive) instead of scores,
    with the round's scoring masks; CoreSet also embeds the labeled set."""
    from baldflow.inference import embed_pool

    features, probs = embed_pool(
        model, data.splits.pool_x[rows_N], plan.mc_samples,
        generator_for(plan.mask_seed, STREAM_SCORE), chunk_size=plan.chunk_size,
        mixed_precision=plan.mixed_precision,
    )  # fmt: skip
    labeled_features = None
    if plan.kind == "coreset" and labeled_ids:
        labeled_features, _ = embed_pool(
            model, data.inputs(sorted(labeled_ids)), 0, generator_for(plan.mask_seed, 0),
            chunk_size=plan.chunk_size, mixed_precision=plan.mixed_precision,
        )  # fmt: skip
    return PoolScores(
        len(ids), [], time.perf_counter() - start, sample_ids=ids, features_N_D=features,
        probs_N_C=probs, labeled_features_L_D=labeled_features,
    )  # fmt: skip


def with_joint_scores(
    scored: PoolScores, plan: ScoringPlan, data: CampaignData, model: Any
) -> PoolScores:
    """BatchBALD: the log-probs of the BALD preselection, under the masks that scored BALD.

    The candidates are ordered by id, not by their place in the pool: the joint scoring then
    sees the same candidates in the same order however the pool was stored or sharded."""
    from baldflow.acquisition.picks import merge_summaries
    from baldflow.inference import predict_log_probs

    start = time.perf_counter()
    ids = sorted(merge_summaries(scored.summaries, plan.batch_size).sample_ids)
    generator = generator_for(plan.mask_seed, STREAM_SCORE)
    log_probs = predict_log_probs(
        model, data.inputs(ids), plan.mc_samples, generator, chunk_size=plan.chunk_size,
        mixed_precision=plan.mixed_precision,
    )  # fmt: skip
    return dataclasses.replace(
        scored,
        candidate_ids=ids,
        log_probs_M_K_C=log_probs,
        seconds=scored.seconds + time.perf_counter() - start,
    )


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


def select_batch(config: Config, scored: PoolScores, seed: int) -> Selected:
    """Pick the batch with the configured strategy; a short pool gives what is left."""
    from baldflow.acquisition.picks import merge_summaries
    from baldflow.acquisition.strategies import get_strategy

    start = time.perf_counter()
    a = config.acquisition
    strategy = get_strategy(a.strategy)
    remaining = scored.remaining
    size = min(a.batch_size, remaining)
    note = None
    if size < a.batch_size:
        note = (
            f"acquisition.batch_size is {a.batch_size} but only {remaining} unlabeled "
            f"sample(s) remain; taking {size}"
        )
    if size == 0:
        return Selected([], [], [], [], a.batch_size, note, time.perf_counter() - start)
    if strategy.needs_log_probs:
        ids, scores, probabilities, keys = _joint_picks(config, strategy, scored, size, seed)
    elif strategy.whole_pool:
        ids, scores, probabilities, keys = _whole_pool_picks(config, strategy, scored, size, seed)
    else:
        picks = merge_summaries(scored.summaries, size, scored.sorted_scores)
        ids, n = picks.sample_ids, len(picks.sample_ids)
        # Random scores nothing: its ledger rows carry no score.
        scores = [None] * n if strategy.score is None else _as_list(picks.scores, n)
        probabilities, keys = _as_list(picks.probabilities, n), _as_list(picks.keys, n)
        if strategy.mode == "topk":  # deterministic: no probability, the key is the score
            probabilities, keys = [None] * n, [None] * n
    return Selected(
        sample_ids=ids,
        scores=scores,
        probabilities=probabilities,
        keys=keys,
        requested=a.batch_size,
        note=note,
        seconds=time.perf_counter() - start,
    )


def _joint_picks(config: Config, strategy: Any, scored: PoolScores, size: int, seed: int):
    """BatchBALD (greedy) or stochastic BatchBALD (each next point sampled from its conditional
    gain^coldness, noise keyed by candidate id) on the BALD preselection."""
    from baldflow.acquisition.batchbald import batchbald

    a = config.acquisition
    assert scored.candidate_ids is not None and scored.log_probs_M_K_C is not None
    size = min(size, len(scored.candidate_ids))
    sampled = {}
    if strategy.kind == "stochastic-batchbald":
        sampled = {
            "mode": strategy.mode, "coldness": a.coldness,
            "sample_ids": scored.candidate_ids, "seed": selection_seed(seed),
        }  # fmt: skip
    chosen = batchbald(
        scored.log_probs_M_K_C, size, num_samples=a.batchbald_num_samples,
        generator=generator_for(seed, STREAM_SELECT), return_details=True, **sampled,
    )  # fmt: skip
    ids = [scored.candidate_ids[int(i)] for i in chosen.indices]
    n = len(ids)
    probabilities = getattr(chosen, "probabilities", None) if sampled else None
    return ids, _as_list(chosen.gains, n), _as_list(probabilities, n), [None] * n


def _whole_pool_picks(config: Config, strategy: Any, scored: PoolScores, size: int, seed: int):
    """Annealed batches (one pick at a time, coldness from acquisition.coldness to
    coldness_end), BADGE (k-means++ seeding on gradient embeddings) and CoreSet (greedy
    k-center): each needs every unlabeled sample at once."""
    a = config.acquisition
    ids_N = scored.sample_ids
    assert ids_N is not None
    if strategy.kind == "annealed":
        from baldflow.acquisition.annealed import annealed_select_by_id, coldness_schedule

        chosen = annealed_select_by_id(
            scored.scores_N, ids_N, size, strategy.mode,
            coldness_schedule(size, a.coldness, a.coldness_end), seed=selection_seed(seed),
        )  # fmt: skip
        rows = chosen.indices.tolist()
        n = len(rows)
        return (
            [ids_N[r] for r in rows], _as_list(scored.scores_N[rows], n),
            _as_list(chosen.probabilities, n), _as_list(chosen.keys, n),
        )  # fmt: skip
    if strategy.kind == "badge":
        from baldflow.acquisition.badge import badge, gradient_embeddings

        rows, probabilities = badge(
            gradient_embeddings(scored.features_N_D, scored.probs_N_C), size,
            generator_for(seed, STREAM_SELECT), return_probabilities=True,
        )  # fmt: skip
        n = len(rows)
        return [ids_N[int(r)] for r in rows], [None] * n, _as_list(probabilities, n), [None] * n
    from baldflow.acquisition.coreset import coreset

    rows = coreset(scored.features_N_D, size, scored.labeled_features_L_D)
    n = len(rows)
    return [ids_N[int(r)] for r in rows], [None] * n, [None] * n, [None] * n


def shard_job(
    config: Config,
    seed: int,
    *,
    model_dir: str | Path,
    pool_dir: str | Path,
    exclude_file: str | Path | None,
    scores_dir: str | Path | None,
) -> Any:
    """The `sharding.ShardJob` that scores a round's pool as `score_pool` would in one process:
    the same plan (score, K, masks, selection), one torch thread per worker process."""
    from baldflow.sharding import ShardJob

    plan = scoring_plan(config, seed)
    return ShardJob(
        model_dir=str(model_dir),
        pool_dir=str(pool_dir),
        score=plan.score or "bald",  # random: unused, no model pass
        mc_samples=plan.mc_samples,
        mask_seed=plan.mask_seed,
        chunk_size=plan.chunk_size,
        batch_size=plan.batch_size,
        mode=plan.mode,
        coldness=plan.coldness,
        selection_seed=plan.selection_seed,
        torch_threads=1,
        exclude_file=None if exclude_file is None else str(exclude_file),
        scores_dir=None if scores_dir is None else str(scores_dir),
        device=config.training.device,
        mixed_precision=config.training.mixed_precision,
    )


def sharded_pool_scores(
    config: Config,
    data: CampaignData,
    model: Any,
    seed: int,
    results: Sequence[Any],
    sorted_scores: torch.Tensor | None,
    seconds: float,
    shard_files: tuple[str, str, list[tuple[int, int]]] | None = None,
) -> PoolScores:
    """The round's PoolScores from every shard's result (`sharding.ShardResult`); BatchBALD's
    joint scoring of the merged preselection runs here, in the flow's process."""
    plan = scoring_plan(config, seed)
    remaining = sum(result.scored for result in results)
    if remaining == 0:
        return PoolScores(0, [], seconds, len(results))
    summaries = [result.summary for result in results]
    scored = PoolScores(
        remaining, summaries, seconds, len(results), sorted_scores, shard_files=shard_files
    )
    return with_joint_scores(scored, plan, data, model) if plan.joint else scored


def batch_evidence(
    config: Config,
    data: CampaignData,
    model: Any,
    labeled_ids: set[str],
    selected: Selected,
    seed: int,
    scored: PoolScores | None = None,
) -> dict[str, float]:
    """How good the acquired batch is as a batch, and (acquisition.shadow_batchbald) how it
    compares with BatchBALD's batch on the same model: the round's `batch_*` / `shadow_*`
    MLflow metrics. Never changes the batch.

    The batch's log-probs use the round's scoring masks, so its joint mutual information is
    the BatchBALD objective of exactly what was picked. Near-duplicates are copies of one
    source sample (`data.repeat`), the redundancy stochastic acquisition is meant to avoid.
    """
    from baldflow.acquisition.quality import batch_overlap, batch_quality, mi_gap
    from baldflow.data.repeat import split_repeat_id
    from baldflow.inference import predict_log_probs

    if not selected.sample_ids:
        return {}
    started = time.perf_counter()
    a = config.acquisition
    log_probs = predict_log_probs(
        model, data.inputs(selected.sample_ids), a.mc_samples,
        generator_for(seed, STREAM_SCORE), chunk_size=a.chunk_size,
        mixed_precision=config.training.mixed_precision,
    )  # fmt: skip
    quality = batch_quality(
        log_probs,
        duplicate_key=lambda sid: split_repeat_id(sid)[0],
        sample_ids=list(selected.sample_ids),
        num_samples=a.batchbald_num_samples,
        generator=generator_for(seed, STREAM_EVIDENCE),
    )
    evidence = {f"batch_{k}" if not k.startswith("batch_") else k: v for k, v in quality.items()}
    evidence["seconds_evidence"] = time.perf_counter() - started
    if a.shadow_batchbald and a.strategy != "batchbald" and not data.on_disk:
        started = time.perf_counter()
        shadow_config = config.model_copy(
            update={"acquisition": a.model_copy(update={"strategy": "batchbald"})}
        )
        shadow_plan = scoring_plan(shadow_config, seed)
        by_bald = scoring_plan(config, seed).score == "bald"
        if scored is not None and scored.scores_N is not None and by_bald:
            # The round already scored every unlabeled sample by BALD with the same masks:
            # BatchBALD's preselection is cut from those scores, not from a second pass.
            shadow_scored = pool_scores_from(
                shadow_plan, data, model, scored.sample_ids, scored.scores_N, started
            )
        else:
            shadow_scored = score_pool(shadow_config, data, model, labeled_ids, seed)
        shadow = select_batch(shadow_config, shadow_scored, seed)
        shadow_log_probs = predict_log_probs(
            model, data.inputs(shadow.sample_ids), a.mc_samples,
            generator_for(seed, STREAM_SCORE), chunk_size=a.chunk_size,
            mixed_precision=config.training.mixed_precision,
        )  # fmt: skip
        shadow_quality = batch_quality(
            shadow_log_probs,
            sample_ids=list(shadow.sample_ids),
            num_samples=a.batchbald_num_samples,
            generator=generator_for(seed, STREAM_EVIDENCE),
        )
        evidence["shadow_overlap"] = batch_overlap(selected.sample_ids, shadow.sample_ids)
        evidence["shadow_joint_mi"] = shadow_quality["batch_joint_mi"]
        evidence["shadow_mi_gap"] = mi_gap(
            evidence["batch_joint_mi"], shadow_quality["batch_joint_mi"]
        )
        evidence["seconds_shadow"] = time.perf_counter() - started
    return {k: float(v) for k, v in evidence.items()}
