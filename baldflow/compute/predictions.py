"""The model's guesses for a batch that people label (Label Studio's pre-annotations)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from baldflow.config import Config
from baldflow.data.pool import CampaignPool
from baldflow.seeds import STREAM_PREDICT, generator_for


def batch_predictions(
    config: Config, data: CampaignPool, model: Any, sample_ids: Sequence[str], seed: int
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
