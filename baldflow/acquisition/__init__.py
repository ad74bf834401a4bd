"""Acquisition maths: scores of MC log-probabilities, batch selection, BatchBALD, the registry.

Pure tensor code: nothing here imports the rest of baldflow.
"""

from baldflow.acquisition.batchbald import batchbald
from baldflow.acquisition.scores import SCORES, get_score
from baldflow.acquisition.selection import MODES, select
from baldflow.acquisition.strategies import (
    STRATEGY_NAMES,
    Acquisition,
    Strategy,
    UnknownStrategyError,
    acquire,
    canonical_name,
    get_strategy,
    suggest,
)

__all__ = [
    "MODES",
    "SCORES",
    "STRATEGY_NAMES",
    "Acquisition",
    "Strategy",
    "UnknownStrategyError",
    "acquire",
    "batchbald",
    "canonical_name",
    "get_score",
    "get_strategy",
    "select",
    "suggest",
]
