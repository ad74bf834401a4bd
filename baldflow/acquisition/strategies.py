"""The one registry of acquisition strategies: a name such as `power-bald` -> the code it runs.

A strategy is `<mode>-<score>` (a selection mode of selection.py applied to a score of
scores.py, or to EPIG: `power-epig`), or one that chooses the batch as a whole:

- `random`; `batchbald` and `stochastic-batchbald` (joint scoring of the top BALD candidates,
  the second sampling each next point from its conditional gains: batchbald.py);
- `annealed-<mode>-bald` (one pick at a time with a coldness schedule: annealed.py);
- `badge` and `coreset` (diversity in the model's embeddings: badge.py, coreset.py).

Names use hyphens only (`power-least-confidence`); the score it runs keeps its function's name
(`least_confidence`). Campaigns recorded with the older underscore spelling still resolve
(canonical_name).
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


# EPIG is scored like the scores of scores.py but needs target inputs, built per round.
EPIG = "epig"
# Strategies that choose the batch as a whole; "scored" ones cut a batch from per-sample scores.
KINDS = ("scored", "batchbald", "stochastic-batchbald", "annealed", "badge", "coreset")
JOINT_KINDS = frozenset({"batchbald", "stochastic-batchbald"})
# Kinds that need the whole pool's scores or embeddings in one process: no sharded merge.
WHOLE_POOL_KINDS = frozenset({"annealed", "badge", "coreset"})


@dataclass(frozen=True)
class Strategy:
    """What a strategy name means: how the batch is chosen (`kind`, `mode`) from which
    `score`."""

    name: str
    mode: str | None  # a selection mode; None where the kind decides alone
    score: str | None  # a score name (or "epig"); None for random, batchbald, badge, coreset
    kind: str = "scored"

    @property
    def needs_log_probs(self) -> bool:
        """True when the strategy needs the log-probs of its candidates, not just scores."""
        return self.kind in JOINT_KINDS

    @property
    def whole_pool(self) -> bool:
        """True when the batch needs every sample's score or embedding in one process."""
        return self.kind in WHOLE_POOL_KINDS

    @property
    def min_mc_samples(self) -> int:
        """The fewest MC samples K with which the strategy's choice depends on the model.

        BatchBALD, EPIG and the disagreement scores (BALD, ...) are 0 everywhere when K = 1.
        """
        if self.needs_log_probs or self.score in DISAGREEMENT_SCORES or self.score == EPIG:
            return 2
        return 1


def _dashed(score: str) -> str:
    """A score's name as it reads inside a strategy name: one separator style throughout."""
    return score.replace("_", "-")


def _build_registry() -> dict[str, Strategy]:
    registry = {
        f"{mode}-{_dashed(score)}": Strategy(f"{mode}-{_dashed(score)}", mode, score)
        for mode in SCORED_MODES
        for score in (*SCORES, EPIG)
    }
    registry["random"] = Strategy("random", "random", None)
    registry["batchbald"] = Strategy("batchbald", None, None, "batchbald")
    registry["stochastic-batchbald"] = Strategy(
        "stochastic-batchbald", "power", None, "stochastic-batchbald"
    )
    for mode in ("power", "softmax", "softrank"):
        name = f"annealed-{mode}-bald"
        registry[name] = Strategy(name, mode, "bald", "annealed")
    registry["badge"] = Strategy("badge", None, None, "badge")
    registry["coreset"] = Strategy("coreset", None, None, "coreset")
    return registry


STRATEGIES: dict[str, Strategy] = _build_registry()
STRATEGY_NAMES: list[str] = sorted(STRATEGIES)


def canonical_name(name: str) -> str:
    """`name` as the registry spells it today.

    Campaigns recorded before names settled on hyphens say `power-least_confidence`; their
    campaign.yaml, ledger rows and MLflow tags must keep resolving, so an old spelling maps to
    today's name. Anything else comes back unchanged (unknown names stay unknown).
    """
    if isinstance(name, str) and name not in STRATEGIES:
        dashed = name.replace("_", "-")
        if dashed in STRATEGIES:
            return dashed
    return name


def suggest(name: str) -> list[str]:
    """The strategies a mistyped or incomplete strategy name most likely meant (maybe none).

    A bare score (`bald`, `least_confidence`) is a strategy without its selection mode: the
    answer is that score under the paper's stochastic mode and under top-k (`power-bald`,
    `topk-bald`), not whichever name happens to be spelled alike (`badge`).
    """
    import difflib

    text = str(name).strip().lower().replace("_", "-")
    scores = {_dashed(score) for score in (*SCORES, EPIG)}
    if text in scores:
        return [f"{mode}-{text}" for mode in ("power", "topk")]
    return difflib.get_close_matches(text, STRATEGY_NAMES, n=1, cutoff=0.65)


def get_strategy(name: str) -> Strategy:
    """The strategy called `name` (or its old spelling); UnknownStrategyError otherwise."""
    try:
        return STRATEGIES[canonical_name(name)]
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
    if strategy.kind not in ("scored", "batchbald"):
        raise ValueError(
            f"strategy {strategy.name!r} chooses its batch from more than scores or log-probs "
            "(ids, a schedule or embeddings): a round runs it through baldflow.compute"
        )
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
