"""The one registry of acquisition strategies: a name such as `power-bald` -> the code it runs.

A strategy is `<mode>-<score>` (a selection mode of selection.py applied to a score of
scores.py), or one of the two that stand alone: `random` and `batchbald`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from baldflow.acquisition.batchbald import DEFAULT_NUM_SAMPLES, batchbald
from baldflow.acquisition.scores import DISAGREEMENT_SCORES, SCORES
from baldflow.acquisition.selection import MODES, select

SCORED_MODES = tuple(mode for mode in MODES if mode != "random")


class UnknownStrategyError(ValueError):
    """A strategy name that the registry does not know."""


@dataclass(frozen=True)
class Strategy:
    """What a strategy name means: how the batch is chosen (`mode`) from which `score`."""

    name: str
    mode: str | None  # a selection mode; None for batchbald
    score: str | None  # a score name; None for random and batchbald

    @property
    def needs_log_probs(self) -> bool:
        """True when the strategy needs the full log_probs_N_K_C, not just scores_N."""
        return self.name == "batchbald"

    @property
    def min_mc_samples(self) -> int:
        """The fewest MC samples K with which the strategy's choice depends on the model.

        BatchBALD and the disagreement scores (BALD, ...) are 0 for every point when K = 1.
        """
        if self.name == "batchbald" or self.score in DISAGREEMENT_SCORES:
            return 2
        return 1


def _build_registry() -> dict[str, Strategy]:
    registry = {
        f"{mode}-{score}": Strategy(f"{mode}-{score}", mode, score)
        for mode in SCORED_MODES
        for score in SCORES
    }
    registry["random"] = Strategy("random", "random", None)
    registry["batchbald"] = Strategy("batchbald", None, None)
    return registry


STRATEGIES: dict[str, Strategy] = _build_registry()
STRATEGY_NAMES: list[str] = sorted(STRATEGIES)


def get_strategy(name: str) -> Strategy:
    """The strategy called `name`; UnknownStrategyError listing the valid names otherwise."""
    try:
        return STRATEGIES[name]
    except (KeyError, TypeError):
        raise UnknownStrategyError(
            f"unknown acquisition strategy {name!r}; valid strategies: {', '.join(STRATEGY_NAMES)}"
        ) from None


@dataclass
class Acquisition:
    """A chosen batch and, per chosen point, what the ledger records about why.

    `scores` is each point's score (for batchbald: its gain, the BatchBALD increment);
    `probabilities` its first-pick probability and `keys` its perturbed key, for the
    stochastic modes (None where they do not apply).
    """

    indices: torch.Tensor
    scores: torch.Tensor | None
    probabilities: torch.Tensor | None
    keys: torch.Tensor | None


def acquire(
    strategy: Strategy | str,
    batch_size: int,
    *,
    scores_N: torch.Tensor | None = None,
    log_probs_N_K_C: torch.Tensor | None = None,
    coldness: float = 1.0,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    generator: torch.Generator | None = None,
    pool_size: int | None = None,
) -> Acquisition:
    """Choose a batch with `strategy`.

    Give `scores_N` for the scored strategies, `log_probs_N_K_C` for batchbald, and for random
    either `scores_N` (recorded, not used) or `pool_size`.
    """
    if isinstance(strategy, str):
        strategy = get_strategy(strategy)
    if strategy.needs_log_probs:
        if log_probs_N_K_C is None:
            raise ValueError(f"strategy {strategy.name!r} needs log_probs_N_K_C")
        chosen = batchbald(
            log_probs_N_K_C,
            batch_size,
            num_samples=num_samples,
            generator=generator,
            return_details=True,
        )
        return Acquisition(chosen.indices, chosen.gains, None, None)

    if scores_N is None:
        if strategy.mode != "random":
            raise ValueError(f"strategy {strategy.name!r} needs scores_N ({strategy.score})")
        if pool_size is None:
            raise ValueError("strategy 'random' needs scores_N or pool_size")
        selection_scores_N = torch.zeros(pool_size, dtype=torch.float64)
    else:
        selection_scores_N = scores_N
    chosen = select(
        selection_scores_N,
        batch_size,
        strategy.mode,
        coldness=coldness,
        generator=generator,
        return_details=True,
    )
    indices = chosen.indices
    picked_scores = None if scores_N is None else torch.as_tensor(scores_N)[indices].double()
    if strategy.mode == "topk":
        return Acquisition(indices, picked_scores, None, None)
    return Acquisition(
        indices, picked_scores, chosen.probabilities_N[indices], chosen.keys_N[indices]
    )
