"""The scoring plan of a round and scoring its unlabeled pool in this process."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import torch

from baldflow.acquisition.strategy import (
    CANDIDATE_LOG_PROBS,
    EMBEDDING_NEEDS,
    LABELED_EMBEDDINGS,
    SAMPLE_SCORES,
    SCORE_NEEDS,
    SelectionInputs,
)
from baldflow.compute.diverse_passes import DIVERSE_NEEDS, merged_rows
from baldflow.config import Config
from baldflow.data.pool import CampaignPool
from baldflow.seeds import STREAM_SCORE, generator_for, selection_seed


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScoringPlan:
    """What a pass over the unlabeled pool computes, in one process or shard by shard
    (`sharding.ShardJob` is this plan plus where a worker reads and writes): the `needs` of
    the round's strategy (acquisition.strategy.NEEDS), the `score` each sample gets, K, the
    masks' seed, and the cut of its candidates (`batch_size`, `mode`, `coldness`,
    `selection_seed`). BatchBALD's cut is its BALD preselection: the top
    `batchbald_candidates` by BALD, whose joint scoring happens once they are merged."""

    score: str | None = "bald"  # None: no model pass, every score 0 (random)
    mc_samples: int = 20
    mask_seed: int = 0
    batch_size: int = 10
    mode: str = "power"
    coldness: float = 1.0
    selection_seed: int = 0
    chunk_size: int | None = None  # inputs per forward pass (None: inference.auto_chunk_size)
    needs: frozenset[str] = frozenset({SAMPLE_SCORES})
    epig_targets: int = 100
    # The annealed schedule's last coldness (acquisition.coldness_end), for PICK_CANDIDATES.
    coldness_end: float | None = None
    # training.mixed_precision: bfloat16 autocast of the model passes on CUDA, none elsewhere.
    mixed_precision: bool = False

    @property
    def cuts(self) -> bool:
        """Whether each shard keeps only its best candidates (else every score goes on)."""
        return bool(self.needs & {SAMPLE_SCORES, CANDIDATE_LOG_PROBS})

    @property
    def keys_per_sample(self) -> bool:
        """Whether the batch is cut by each sample's own perturbed key under `mode`, so that a
        score table can record every sample's key (not for joint or one-at-a-time picks)."""
        return SAMPLE_SCORES in self.needs


def scoring_plan(config: Config, seed: int) -> ScoringPlan:
    """The round's plan: what its strategy needs, scored and cut as the strategy says."""
    from baldflow.acquisition.strategies import get_strategy

    a = config.acquisition
    strategy = get_strategy(a.strategy)
    cut = strategy.cut(a.model_dump())
    return ScoringPlan(
        score=cut.score, mc_samples=a.mc_samples, mask_seed=seed, batch_size=cut.size,
        mode=cut.mode, coldness=cut.coldness, selection_seed=selection_seed(seed),
        chunk_size=a.chunk_size, needs=strategy.needs, epig_targets=a.epig_targets,
        mixed_precision=config.training.mixed_precision,
    )  # fmt: skip


def sharded_plan(config: Config, seed: int) -> ScoringPlan:
    """The round's plan where the pool is scored in shards: what the strategy needs there
    (`Strategy.needs_in_shards`) and the annealed schedule's end."""
    from baldflow.acquisition.strategies import get_strategy

    strategy = get_strategy(config.acquisition.strategy)
    return dataclasses.replace(
        scoring_plan(config, seed), needs=strategy.needs_in_shards,
        coldness_end=config.acquisition.coldness_end,
    )  # fmt: skip


@dataclasses.dataclass(kw_only=True)
class PoolScores(SelectionInputs):
    """What scoring the unlabeled pool produced for the selection step: what the strategy
    needs (SelectionInputs: one summary per shard, never the N scores of a sharded pool), and
    what the pass cost.

    A pool scored in this process also keeps every unlabeled id with its score, for the
    round's score table (the audit trail)."""

    remaining: int  # unlabeled samples that were scored
    seconds: float
    shards: int = 1
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
    config: Config, data: CampaignPool, model: Any, labeled_ids: set[str], seed: int
) -> PoolScores:
    """Score every unlabeled point of an in-memory pool in this process (streamed)."""
    from baldflow.inference import score_pool as stream_scores

    start = time.perf_counter()
    plan = scoring_plan(config, seed)
    ids = data.unlabeled_ids(labeled_ids)
    if not ids:
        return PoolScores(remaining=0, seconds=time.perf_counter() - start)
    embedded = None
    if plan.needs & EMBEDDING_NEEDS:
        embedded = _embedded_pool(plan, data, model, labeled_ids, ids, start)
        if not plan.needs & SCORE_NEEDS:
            return embedded
    if plan.score is None:  # random needs no model output, only the ids
        scores_N = torch.zeros(len(ids), dtype=torch.float64)
    else:
        score = plan.score
        if score == "epig":
            score = epig_score(plan, data, model, ids)
        scores_N = torch.as_tensor(
            stream_scores(
                model, data.inputs(ids), score, plan.mc_samples,
                generator_for(plan.mask_seed, STREAM_SCORE), chunk_size=plan.chunk_size,
                mixed_precision=plan.mixed_precision,
            )
        )  # fmt: skip
    scored = pool_scores_from(plan, data, model, ids, scores_N, start)
    if embedded is None:
        return scored
    return dataclasses.replace(
        scored, features_N_D=embedded.features_N_D, probs_N_C=embedded.probs_N_C,
        labeled_features_L_D=embedded.labeled_features_L_D,
    )  # fmt: skip


def pool_scores_from(
    plan: ScoringPlan,
    data: CampaignPool,
    model: Any,
    ids: list[str],
    scores_N: torch.Tensor,
    start: float,
) -> PoolScores:
    """What the selection step needs from every unlabeled sample's score under `plan`."""
    if not plan.cuts:  # every score at once (annealed picks one at a time from them all)
        return PoolScores(
            remaining=len(ids), seconds=time.perf_counter() - start, sample_ids=ids,
            scores_N=scores_N,
        )  # fmt: skip
    sorted_scores = scores_N.sort().values if plan.mode == "softrank" else None
    summary = summarise_scores(plan, scores_N, ids, sorted_scores)
    # Every sample's score stays with the round for its score table (the audit trail).
    scored = PoolScores(
        remaining=len(ids), summaries=[summary], seconds=time.perf_counter() - start,
        sorted_scores=sorted_scores, sample_ids=ids,
        scores_N=None if plan.score is None else scores_N,
    )  # fmt: skip
    if CANDIDATE_LOG_PROBS in plan.needs:
        return with_joint_scores(scored, plan, data, model)
    return scored


def epig_score(plan: ScoringPlan, data: CampaignPool, model: Any, unlabeled_ids) -> Any:
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


def _embedded_pool(plan, data, model, labeled_ids, ids, start) -> PoolScores:
    """EMBEDDINGS: the pool's penultimate features (and predictive), with the round's scoring
    masks; LABELED_EMBEDDINGS: the labeled set's features too."""
    from baldflow.inference import embed_pool

    features, probs = embed_pool(
        model, data.inputs(ids), plan.mc_samples,
        generator_for(plan.mask_seed, STREAM_SCORE), chunk_size=plan.chunk_size,
        mixed_precision=plan.mixed_precision,
    )  # fmt: skip
    labeled_features = None
    if LABELED_EMBEDDINGS in plan.needs and labeled_ids:
        labeled_features, _ = embed_pool(
            model, data.inputs(sorted(labeled_ids)), 0, generator_for(plan.mask_seed, 0),
            chunk_size=plan.chunk_size, mixed_precision=plan.mixed_precision,
        )  # fmt: skip
    return PoolScores(
        remaining=len(ids), seconds=time.perf_counter() - start, sample_ids=ids,
        features_N_D=features, probs_N_C=probs, labeled_features_L_D=labeled_features,
    )  # fmt: skip


def with_joint_scores(
    scored: PoolScores, plan: ScoringPlan, data: CampaignPool, model: Any
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


def sharded_pool_scores(
    config: Config,
    data: CampaignPool,
    model: Any,
    seed: int,
    results: Sequence[Any],
    sorted_scores: torch.Tensor | None,
    seconds: float,
    shard_files: tuple[str, str, list[tuple[int, int]]] | None = None,
) -> PoolScores:
    """The round's PoolScores from every shard's result (`sharding.ShardResult`); BatchBALD's
    joint scoring of the merged preselection runs here, in the flow's process."""
    plan = sharded_plan(config, seed)
    remaining = sum(result.scored for result in results)
    if remaining == 0:
        return PoolScores(remaining=0, seconds=seconds, shards=len(results))
    summaries = [result.summary for result in results]
    if plan.needs & DIVERSE_NEEDS:  # BADGE's candidates, CoreSet's certified picks
        rows = merged_rows(summaries)
        return PoolScores(
            remaining=remaining, seconds=seconds, shards=len(results), sample_ids=rows.sample_ids,
            features_N_D=rows.features_m_D, probs_N_C=rows.probs_m_C,
            labeled_features_L_D=rows.labeled_features_L_D,
        )  # fmt: skip
    scored = PoolScores(
        remaining=remaining, summaries=summaries, seconds=seconds, shards=len(results),
        sorted_scores=sorted_scores, shard_files=shard_files,
    )  # fmt: skip
    if CANDIDATE_LOG_PROBS in plan.needs:
        return with_joint_scores(scored, plan, data, model)
    return scored
