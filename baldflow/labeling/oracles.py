"""Oracles that turn sample ids into labels: the simulated one reads held-back labels.

An oracle may also answer "not yet" (people labeling through a file hand-off), which the
pipeline treats as a pause, not an error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


class OracleError(RuntimeError):
    """The oracle cannot label a requested sample."""


class LabelsPendingError(OracleError):
    """The labels were requested but are not available yet (e.g. people are still labeling)."""


@runtime_checkable
class Oracle(Protocol):
    """Anything that labels a batch of samples by id, in the order asked."""

    kind: str

    def label(self, sample_ids: Sequence[str]) -> list[int]: ...


@dataclass
class SimulatedOracle:
    """Answers with the true labels that the data source held back from the learner."""

    labels: Mapping[str, int] = field(repr=False)
    kind: str = "simulated"

    def label(self, sample_ids: Sequence[str]) -> list[int]:
        missing = [sid for sid in sample_ids if sid not in self.labels]
        if missing:
            shown = ", ".join(missing[:5])
            raise OracleError(f"the simulated oracle has no label for sample_id {shown}")
        return [int(self.labels[sid]) for sid in sample_ids]

    def labeled_by(self, sample_ids: Sequence[str]) -> list[str]:
        """Who labeled each sample, for the ledger's `labeled_by` column."""
        return ["simulated oracle"] * len(sample_ids)
