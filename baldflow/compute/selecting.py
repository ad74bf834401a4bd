"""Choosing a round's batch from what scoring produced, with the reasons for each pick."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch

from baldflow.compute.scoring import PoolScores
from baldflow.config import Config
from baldflow.seeds import STREAM_SELECT, generator_for, selection_seed


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
