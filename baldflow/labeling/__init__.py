"""Oracles that label batches: simulated from held-back labels, or people through files."""

from baldflow.labeling.handoff import (
    FileOracle,
    HandOff,
    PendingRound,
    WaitingForLabels,
    describe_item,
    pending_batches,
)
from baldflow.labeling.importing import (
    ImportResult,
    LabelImportError,
    NoPendingBatchError,
    class_index,
    import_labels,
)
from baldflow.labeling.oracles import (
    DiskPoolOracle,
    LabelsPendingError,
    Oracle,
    OracleError,
    PoolOracle,
    SimulatedOracle,
)
from baldflow.labeling.registry import ORACLE_KINDS, build_oracle

__all__ = [
    "ORACLE_KINDS",
    "DiskPoolOracle",
    "FileOracle",
    "HandOff",
    "ImportResult",
    "LabelImportError",
    "LabelsPendingError",
    "NoPendingBatchError",
    "Oracle",
    "OracleError",
    "PendingRound",
    "PoolOracle",
    "SimulatedOracle",
    "WaitingForLabels",
    "build_oracle",
    "class_index",
    "describe_item",
    "import_labels",
    "pending_batches",
]
