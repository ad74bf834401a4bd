"""Choosing a round's batch from what scoring produced, with the reasons for each pick: the
round's strategy chooses (`acquisition.Strategy.select`, the path `acquisition.acquire` takes
too); this module bounds the batch by what is left and turns the reasons into ledger cells."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch

from baldflow.acquisition.strategy import Noise
from baldflow.compute.scoring import PoolScores
from baldflow.config import Config
from baldflow.plugins import STRATEGY_PLUGINS, PluginError


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
    """Ledger cells: None where the reason does not apply or its value is not finite."""
    if values is None:
        return [None] * n
    out = []
    for v in torch.as_tensor(values).tolist():
        out.append(None if v is None or (isinstance(v, float) and not np.isfinite(v)) else float(v))
    return out


def offered_ids(inputs: Any) -> set[str]:
    """Every unlabeled id the round's model pass put before the strategy: the shards'
    candidates, BatchBALD's preselection, or the whole unlabeled pool."""
    offered: set[str] = set()
    for summary in inputs.summaries or []:
        offered.update(summary.candidates.ids)
    offered.update(inputs.candidate_ids or [])
    offered.update(inputs.sample_ids or [])
    return offered


def broken_selection(chosen: Any, inputs: Any, size: int) -> str | None:
    """What is wrong with a strategy's batch, or None: a Selection of `size` distinct ids,
    each one the pass offered, its reasons (when given) one per pick. A round never commits
    a batch that breaks this (the ledger would record samples the pool does not have, or
    one sample twice)."""
    ids = getattr(chosen, "sample_ids", None)
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        return f"select returned {type(chosen).__name__}, not a Selection of sample ids (text)"
    if len(ids) != size:
        return f"select returned {len(ids)} sample(s) for a batch of {size}"
    if len(set(ids)) != len(ids):
        twice = next(i for n, i in enumerate(ids) if i in ids[:n])
        return f"select returned sample {twice!r} twice"
    offered = offered_ids(inputs)
    strange = [i for i in ids if i not in offered]
    if strange:
        return (
            f"select returned sample {strange[0]!r}, which is not an unlabeled sample the "
            "round offered it"
        )
    for field in ("scores", "probabilities", "keys"):
        values = getattr(chosen, field, None)
        if values is not None and len(values) != size:
            return f"select returned {len(values)} {field} for {size} picks"
    return None


def select_batch(config: Config, scored: PoolScores, seed: int) -> Selected:
    """Pick the batch with the configured strategy; a short pool gives what is left."""
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
    chosen = strategy.select(scored, size, a.model_dump(), Noise.of_round(seed))
    problem = broken_selection(chosen, scored, size)
    if problem:
        plugin = STRATEGY_PLUGINS.resolve(a.strategy)
        raise PluginError("strategy", a.strategy, problem, package=plugin.package or None)
    n = len(chosen.sample_ids)
    return Selected(
        sample_ids=list(chosen.sample_ids),
        scores=_as_list(chosen.scores, n),
        probabilities=_as_list(chosen.probabilities, n),
        keys=_as_list(chosen.keys, n),
        requested=a.batch_size,
        note=note,
        seconds=time.perf_counter() - start,
    )
