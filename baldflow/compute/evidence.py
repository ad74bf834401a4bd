"""How good an acquired batch is as a batch, and how it compares with BatchBALD's."""

from __future__ import annotations

import time
from typing import Any

from baldflow.compute.scoring import PoolScores, pool_scores_from, score_pool, scoring_plan
from baldflow.compute.selecting import Selected, select_batch
from baldflow.config import Config
from baldflow.data.pool import CampaignPool
from baldflow.seeds import STREAM_EVIDENCE, STREAM_SCORE, generator_for

# The strategy whose batch the shadow check compares the round's with (a round of that
# strategy has nothing to compare).
SHADOW_STRATEGY = "batchbald"


def batch_evidence(
    config: Config,
    data: CampaignPool,
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
    from baldflow.acquisition.quality import batch_overlap, mi_gap
    from baldflow.data.repeat import split_repeat_id

    if not selected.sample_ids:
        return {}
    started = time.perf_counter()
    a = config.acquisition
    quality = _quality_of(
        config, data, model, selected.sample_ids, seed,
        duplicate_key=lambda sid: split_repeat_id(sid)[0],
    )  # fmt: skip
    evidence = {f"batch_{k}" if not k.startswith("batch_") else k: v for k, v in quality.items()}
    evidence["seconds_evidence"] = time.perf_counter() - started
    if a.shadow_batchbald and a.strategy != SHADOW_STRATEGY and not data.streamed:
        started = time.perf_counter()
        shadow_config = config.model_copy(
            update={"acquisition": a.model_copy(update={"strategy": SHADOW_STRATEGY})}
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
        shadow_quality = _quality_of(config, data, model, shadow.sample_ids, seed)
        evidence["shadow_overlap"] = batch_overlap(selected.sample_ids, shadow.sample_ids)
        evidence["shadow_joint_mi"] = shadow_quality["batch_joint_mi"]
        evidence["shadow_mi_gap"] = mi_gap(
            evidence["batch_joint_mi"], shadow_quality["batch_joint_mi"]
        )
        evidence["seconds_shadow"] = time.perf_counter() - started
    return {k: float(v) for k, v in evidence.items()}


def _quality_of(
    config: Config,
    data: CampaignPool,
    model: Any,
    sample_ids: list[str],
    seed: int,
    duplicate_key: Any = None,
) -> dict[str, Any]:
    """`acquisition.quality.batch_quality` of one batch, its log-probs drawn with the round's
    scoring masks (so its joint MI is the BatchBALD objective of exactly these samples)."""
    from baldflow.acquisition.quality import batch_quality
    from baldflow.inference import predict_log_probs

    a = config.acquisition
    log_probs = predict_log_probs(
        model, data.inputs(sample_ids), a.mc_samples,
        generator_for(seed, STREAM_SCORE), chunk_size=a.chunk_size,
        mixed_precision=config.training.mixed_precision,
    )  # fmt: skip
    return batch_quality(
        log_probs,
        duplicate_key=duplicate_key,
        sample_ids=list(sample_ids),
        num_samples=a.batchbald_num_samples,
        generator=generator_for(seed, STREAM_EVIDENCE),
    )
