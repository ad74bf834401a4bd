"""Oracles that turn sample ids into labels: the simulated one reads held-back labels.

An oracle may also answer "not yet" (people labeling through a file hand-off), which the
pipeline treats as a pause, not an error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from baldflow.data.pool import CampaignPool
    from baldflow.data.row_pool import RowPool


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


@dataclass
class DiskPoolOracle:
    """The simulated oracle of a pool on disk: answers with the labels the pool stores.

    Why not `SimulatedOracle`: its dict holds every pool id (about 150 MB per million in
    CPython) and is pickled to every worker; this one looks labels up through the pool's id
    index (`DiskPool.labels_by_ids`, 16 bytes per row, built on first use) and pickles as the
    pool's path. A stored label of -1 (unknown) is refused, never passed on as a class.
    """

    pool: RowPool = field(repr=False)
    kind: str = "simulated"

    def label(self, sample_ids: Sequence[str]) -> list[int]:
        from baldflow.data.row_pool import UNKNOWN_LABEL, UnknownIdError

        sample_ids = list(sample_ids)
        try:
            labels = self.pool.labels_by_ids(sample_ids).tolist()
        except UnknownIdError:
            missing = [sid for sid in sample_ids if not self._has(sid)]
            shown = ", ".join(str(sid) for sid in missing[:5])
            raise OracleError(
                f"the simulated oracle has no label for sample_id {shown} "
                f"(not in the pool {self.pool.directory})"
            ) from None
        unknown = [sid for sid, y in zip(sample_ids, labels, strict=True) if y == UNKNOWN_LABEL]
        if unknown:
            shown = ", ".join(str(sid) for sid in unknown[:5])
            raise OracleError(
                f"the simulated oracle has no label for sample_id {shown}: the pool "
                f"{self.pool.directory} stores it as unknown (-1)"
            )
        return [int(y) for y in labels]

    def labeled_by(self, sample_ids: Sequence[str]) -> list[str]:
        """Who labeled each sample, for the ledger's `labeled_by` column."""
        return ["simulated oracle"] * len(sample_ids)

    def _has(self, sample_id: str) -> bool:
        from baldflow.data.row_pool import UnknownIdError

        try:
            self.pool.positions([sample_id])
        except UnknownIdError:
            return False
        return True


@dataclass
class PoolOracle:
    """The simulated oracle of a campaign's pool: answers with the labels the pool holds back
    (`CampaignPool.known_labels`), whether the pool is in memory or read from disk by id.

    Why not `SimulatedOracle`: a dict of every pool id costs about 150 MB per million in
    CPython; the pool already knows how to look labels up. A held-back label of -1 (unknown) is
    refused, never passed on as a class.
    """

    pool: CampaignPool = field(repr=False)
    kind: str = "simulated"

    def label(self, sample_ids: Sequence[str]) -> list[int]:
        # The data layer (torch) is imported here, not with the module: `baldflow.labeling`
        # stays quick to import for the commands that only read hand-offs.
        from baldflow.data.row_pool import UNKNOWN_LABEL

        sample_ids = list(sample_ids)
        try:
            labels = self.pool.known_labels(sample_ids).tolist()
        except KeyError:
            missing = [sid for sid in sample_ids if not self._has(sid)]
            shown = ", ".join(str(sid) for sid in missing[:5])
            raise OracleError(
                f"the simulated oracle has no label for sample_id {shown} (not in the pool)"
            ) from None
        unknown = [sid for sid, y in zip(sample_ids, labels, strict=True) if y == UNKNOWN_LABEL]
        if unknown:
            shown = ", ".join(str(sid) for sid in unknown[:5])
            raise OracleError(
                f"the simulated oracle has no label for sample_id {shown}: the pool stores it "
                f"as unknown (-1)"
            )
        return [int(y) for y in labels]

    def labeled_by(self, sample_ids: Sequence[str]) -> list[str]:
        """Who labeled each sample, for the ledger's `labeled_by` column."""
        return ["simulated oracle"] * len(sample_ids)

    def _has(self, sample_id: str) -> bool:
        try:
            self.pool.known_labels([sample_id])
        except KeyError:
            return False
        return True
