"""Acquisition maths and strategies: scores of MC log-probabilities, batch selection,
BatchBALD, the strategy interface and its registry.

Pure tensor code: nothing here imports the rest of baldflow but the ground floor (seeds).
A strategy is an `acquisition.Strategy` (strategy.py); `register_strategy` makes a new one
known to config, campaigns and ledgers like the built-ins, and `acquire` chooses a batch
through the same `Strategy.select` a round calls.
"""

from baldflow.acquisition.batchbald import batchbald
from baldflow.acquisition.scores import SCORES, get_score
from baldflow.acquisition.selection import MODES, select
from baldflow.acquisition.strategies import (
    STRATEGY_NAMES,
    Acquisition,
    UnknownStrategyError,
    acquire,
    canonical_name,
    get_strategy,
    register_strategy,
    suggest,
    unregister_strategy,
)
from baldflow.acquisition.strategy import (
    CANDIDATE_LOG_PROBS,
    EMBEDDINGS,
    LABELED_EMBEDDINGS,
    NEEDS,
    POOL_SCORES,
    SAMPLE_SCORES,
    Noise,
    Problem,
    ScoreCut,
    Selection,
    SelectionInputs,
    Strategy,
    StrategyError,
)

__all__ = [
    "CANDIDATE_LOG_PROBS",
    "EMBEDDINGS",
    "LABELED_EMBEDDINGS",
    "MODES",
    "NEEDS",
    "POOL_SCORES",
    "SAMPLE_SCORES",
    "SCORES",
    "STRATEGY_NAMES",
    "Acquisition",
    "Noise",
    "Problem",
    "ScoreCut",
    "Selection",
    "SelectionInputs",
    "Strategy",
    "StrategyError",
    "UnknownStrategyError",
    "acquire",
    "batchbald",
    "canonical_name",
    "get_score",
    "get_strategy",
    "register_strategy",
    "select",
    "suggest",
    "unregister_strategy",
]
