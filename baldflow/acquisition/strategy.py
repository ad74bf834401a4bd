"""The interface every acquisition strategy keeps, built-in or registered.

A strategy says what it needs from the round's model pass (a few names of `NEEDS`), whether
the pool may be scored in shards for it, which parameters it refuses, and chooses the batch
from what the pass produced (`select`). The compute layer produces what `needs` names and
calls `select`; nothing outside the strategies asks which strategy it is.
"""

from __future__ import annotations

import dataclasses
import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from baldflow.seeds import STREAM_SELECT, generator_for, selection_seed

# What a strategy may need from the round's model pass: a small fixed vocabulary, so that the
# compute layer dispatches on these names and never on a strategy's.
SAMPLE_SCORES = "sample-scores"
"""Each unlabeled sample's score (of `ScoreCut.score`), cut in every shard to its best
`ScoreCut.size` candidates under `ScoreCut.mode` and `coldness`: `SelectionInputs.summaries`
(and `sorted_scores` for softrank)."""
CANDIDATE_LOG_PROBS = "candidate-log-probs"
"""The MC log-probs of the candidates that cut leaves (the merged preselection, ordered by id):
`SelectionInputs.candidate_ids` and `log_probs_M_K_C`."""
POOL_SCORES = "pool-scores"
"""Every unlabeled sample's score at once, in one process: `sample_ids` and `scores_N`."""
EMBEDDINGS = "embeddings"
"""Every unlabeled sample's penultimate features and predictive, in one process: `sample_ids`,
`features_N_D` and `probs_N_C`."""
LABELED_EMBEDDINGS = "labeled-embeddings"
"""The labeled set's penultimate features: `labeled_features_L_D` (None while none is labeled)."""
PICK_CANDIDATES = "pick-candidates"
"""A batch drawn one pick at a time (annealed): each shard's best i + 1 samples for every pick
i under that pick's coldness, with its share of each pick's normaliser, one
`acquisition.annealed.AnnealedShard` per shard in `SelectionInputs.summaries`."""

COVER_CANDIDATES = "cover-candidates"
"""Greedy k-center (CoreSet) on a pool in shards: passes in which each shard proposes its rows
farthest from the labeled set and the picks so far, until every pick is certified
(`acquisition.diverse_shards`); `sample_ids` and `features_N_D` then hold exactly the picks,
`labeled_features_L_D` the labeled set's features."""
SEEDING_CANDIDATES = "seeding-candidates"
"""k-means++ seeding (BADGE) on a pool in shards: each shard's own seeding of its gradient
embeddings proposes a few rows; `sample_ids`, `features_N_D` and `probs_N_C` hold their union."""

NEEDS = (
    SAMPLE_SCORES, CANDIDATE_LOG_PROBS, POOL_SCORES, EMBEDDINGS, LABELED_EMBEDDINGS,
    PICK_CANDIDATES, COVER_CANDIDATES, SEEDING_CANDIDATES,
)  # fmt: skip
# Needs that hold every unlabeled sample in one process: no shard can produce them alone.
WHOLE_POOL_NEEDS = frozenset({POOL_SCORES, EMBEDDINGS, LABELED_EMBEDDINGS})
# Needs whose pass scores each unlabeled sample (the others only embed it).
SCORE_NEEDS = frozenset({SAMPLE_SCORES, CANDIDATE_LOG_PROBS, POOL_SCORES, PICK_CANDIDATES})
EMBEDDING_NEEDS = frozenset({EMBEDDINGS, LABELED_EMBEDDINGS})


class StrategyError(ValueError):
    """A strategy that does not keep the interface, or a name the registry refuses."""


@dataclass(frozen=True)
class ScoreCut:
    """What the model pass computes per unlabeled sample and how much of it a shard keeps:
    the `score` function (None: no model pass, every score 0) and, for SAMPLE_SCORES and
    CANDIDATE_LOG_PROBS, the best `size` samples under selection `mode` at `coldness`."""

    score: str | None
    size: int
    mode: str
    coldness: float


@dataclass(frozen=True)
class Problem:
    """Why a strategy cannot run with the parameters: `field`, an acquisition parameter (or
    `strategy`), and the rest of the sentence that starts with it. `sole_cause` is False where
    the fault is the pair of field and strategy rather than where the field was set (too few MC
    samples for a disagreement score), so a caller does not blame the field's origin."""

    field: str
    message: str
    sole_cause: bool = True


@dataclass(kw_only=True)
class SelectionInputs:
    """What the round's model pass produced, by need (None where the strategy did not need it).

    The compute layer's `PoolScores` is one of these with the pass's costs added.
    """

    # SAMPLE_SCORES: one summary per shard (acquisition.picks.ShardSummary); softrank: the pool's
    # sorted scores, since a pick's weight is its rank in the whole pool.
    summaries: list = dataclasses.field(default_factory=list)
    sorted_scores: torch.Tensor | None = None
    # CANDIDATE_LOG_PROBS: the preselected candidates (by id) and their joint log-probs.
    candidate_ids: list[str] | None = None
    log_probs_M_K_C: torch.Tensor | None = None  # noqa: N815
    # POOL_SCORES, EMBEDDINGS: every unlabeled id with its score, or its embedding and
    # predictive; LABELED_EMBEDDINGS: the labeled set's embeddings.
    sample_ids: list[str] | None = None
    scores_N: torch.Tensor | None = None  # noqa: N815
    features_N_D: torch.Tensor | None = None  # noqa: N815
    probs_N_C: torch.Tensor | None = None  # noqa: N815
    labeled_features_L_D: torch.Tensor | None = None  # noqa: N815


@dataclass
class Selection:
    """The chosen batch in pick order and, per pick, what the ledger records about why.

    `scores`: each pick's score (BatchBALD: its gain); `probabilities`: its first-pick (or
    conditional pick) probability; `keys`: its perturbed key. Each is a sequence aligned with
    `sample_ids` (a tensor or a list; non-finite values are recorded as missing) or None where
    it does not apply to the strategy.
    """

    sample_ids: list[str]
    scores: Sequence[float] | torch.Tensor | None = None
    probabilities: Sequence[float] | torch.Tensor | None = None
    keys: Sequence[float] | torch.Tensor | None = None


class Noise:
    """Where a strategy's random draws come from: a torch `generator` for draws in sequence
    (BatchBALD's sampled configurations, BADGE's seeding) and a `seed` keying per-sample noise
    by id (`sharded.id_gumbel`). Each is made on first use, so a strategy that draws nothing
    leaves a caller's generator untouched."""

    def __init__(self, make_generator: Callable[[], torch.Generator], make_seed: Callable[[], int]):
        self._make_generator = make_generator
        self._make_seed = make_seed

    @functools.cached_property
    def generator(self) -> torch.Generator:
        return self._make_generator()

    @functools.cached_property
    def seed(self) -> int:
        return self._make_seed()

    @classmethod
    def of_round(cls, round_seed: int) -> Noise:
        """A round's selection streams: `generator_for(seed, STREAM_SELECT)` and
        `selection_seed(seed)`, the ones the shards cut their candidates with."""
        return cls(
            lambda: generator_for(round_seed, STREAM_SELECT), lambda: selection_seed(round_seed)
        )

    @classmethod
    def of_generator(cls, generator: torch.Generator | None, seed: int | None = None) -> Noise:
        """Draws from `generator` (None: a fresh one seeded by the operating system, never the
        global RNG); the id-keyed noise from `seed`, else from one draw of the generator."""
        if generator is None:
            generator = torch.Generator()
            generator.seed()
        if seed is not None:
            return cls(lambda: generator, lambda: int(seed))
        return cls(
            lambda: generator,
            lambda: int(torch.randint(0, 2**62, (1,), generator=generator).item()),
        )


class Strategy(ABC):
    """One acquisition strategy: its name, what it needs, its checks and its selection.

    Subclasses set `name` and `needs` (a frozenset of `NEEDS`), and `score`/`mode` where the
    strategy is about one score or one selection mode; they implement `select`. Parameters of
    the strategy's own belong in its constructor (stored, no work done there); the round's
    acquisition parameters (`acquisition` in params.yaml) reach `check`, `cut` and `select`
    as a mapping by name.
    """

    name: str
    needs: frozenset[str]
    # The score function its per-sample scores come from (a name of acquisition.scores, or
    # "epig"), if any, and its selection mode, if it has one.
    score: str | None = None
    mode: str | None = None

    # ------------------------------------------------------------------ what it needs
    @property
    def needs_in_shards(self) -> frozenset[str]:
        """What it needs where the pool is scored in shards (default: `needs`). A strategy
        that takes every score in one process but can also choose from the shards' parts
        (annealed: PICK_CANDIDATES) says so here; its in-process path stays as it is."""
        return self.needs

    # Whether its batch on a pool in shards is the one process's batch (False: an
    # approximation whose gap docs/acquisition.md gives, and which depends on the shards).
    exact_in_shards: bool = True

    @property
    def shardable(self) -> bool:
        """Whether a pool scored in shards gives this strategy everything it needs."""
        return not self.needs_in_shards & WHOLE_POOL_NEEDS

    @property
    def whole_pool_need(self) -> str:
        """What it needs of every unlabeled sample in one process, for the refusal's message."""
        return "score or embedding"

    @property
    def needs_log_probs(self) -> bool:
        """True when it needs the log-probs of its candidates, not just scores."""
        return CANDIDATE_LOG_PROBS in self.needs

    @property
    def whole_pool(self) -> bool:
        """True when it needs every sample's score or embedding in one process."""
        return bool(self.needs & WHOLE_POOL_NEEDS)

    @property
    def min_mc_samples(self) -> int:
        """The fewest MC samples K with which its choice depends on the model (1: any K)."""
        return 1

    @property
    def measure(self) -> str:
        """What its choice measures, as a refusal of too few MC samples names it."""
        return self.score or self.name

    def cut(self, params: Mapping[str, Any]) -> ScoreCut:
        """What the model pass scores and how much each shard keeps (see ScoreCut): by default
        its `score`, cut to the batch under its `mode` (top-k without one)."""
        return ScoreCut(self.score, params["batch_size"], self.mode or "topk", params["coldness"])

    # ----------------------------------------------------------------------- checks
    def check(self, params: Mapping[str, Any], *, sharded_by: str | None = None) -> list[Problem]:
        """Why it cannot run with the acquisition parameters `params` (only those given are
        checked), or in a pool scored in shards (`sharded_by` names the setting that shards
        it; None: one process). Empty when it can run. Subclasses extend the list."""
        problems = []
        mc_samples = params.get("mc_samples")
        needed = self.min_mc_samples
        if mc_samples is not None and mc_samples < needed:
            problems.append(
                Problem(
                    "mc_samples",
                    f"must be >= {needed} for strategy {self.name!r}, got {mc_samples!r}: "
                    f"{self.measure} measures disagreement between MC samples, so with fewer "
                    f"than {needed} it is 0 for every point and the batch would not depend on "
                    "the model",
                    sole_cause=False,
                )
            )
        if sharded_by is not None and not self.shardable:
            problems.append(
                Problem(
                    "strategy",
                    f"{self.name} needs every unlabeled sample's {self.whole_pool_need} in one "
                    f"process, which {sharded_by} does not give (it scores the pool in shards); "
                    "use a <mode>-bald, <mode>-epig or annealed-<mode>-bald strategy, batchbald "
                    "or stochastic-batchbald there",
                )
            )
        return problems

    # -------------------------------------------------------------------- selection
    @abstractmethod
    def select(
        self,
        inputs: SelectionInputs,
        batch_size: int,
        params: Mapping[str, Any],
        noise: Noise,
    ) -> Selection:
        """Choose at most `batch_size` distinct samples of `inputs` (what `needs` named), in
        pick order. `batch_size` is at most the number of unlabeled samples; `params` holds
        the acquisition parameters by name; every random draw comes from `noise`."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def check_strategy(strategy: Any) -> Strategy:
    """`strategy` if it keeps the interface; StrategyError saying what is missing otherwise."""
    import re

    if not isinstance(strategy, Strategy):
        raise StrategyError(
            f"a strategy must be an instance of baldflow.acquisition.Strategy, got "
            f"{type(strategy).__name__}"
        )
    name = getattr(strategy, "name", None)
    # Names become ledger cells, MLflow tags and campaign records; an underscore would be read
    # as an old spelling of a hyphenated name (acquisition.strategies.canonical_name).
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", name):
        raise StrategyError(
            f"a strategy's name must be lowercase letters, digits and hyphens (at most 63), "
            f"got {name!r}"
        )
    needs = getattr(strategy, "needs", None)
    if not isinstance(needs, frozenset) or not needs or not needs <= set(NEEDS):
        raise StrategyError(
            f"strategy {name}: needs must be a non-empty frozenset of {', '.join(NEEDS)}, "
            f"got {needs!r}"
        )
    return strategy
