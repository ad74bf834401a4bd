"""The scoring plan of a round and scoring its unlabeled pool in this process."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import torch

from baldflow.compute.campaign_data import CampaignData
from baldflow.config import Config
from baldflow.seeds import STREAM_SCORE, generator_for, selection_seed


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
