"""The oracle named by `oracle.kind`, built for a prepared pool."""

from __future__ import annotations

from collections.abc import Sequence

from baldflow.labeling.handoff import FileOracle, HandOff
from baldflow.labeling.oracles import Oracle, OracleError, SimulatedOracle

ORACLE_KINDS = ("simulated", "file")


def build_oracle(
    kind: str,
    *,
    pool_ids: Sequence[str],
    pool_labels: Sequence[int],
    handoff: HandOff | None = None,
) -> Oracle:
    """The oracle of the configured kind for a prepared pool.

    `handoff` is where the `file` oracle finds people's labels.
    """
    if kind == "simulated":
        labels = {sid: int(y) for sid, y in zip(pool_ids, pool_labels, strict=True)}
        return SimulatedOracle(labels)
    if kind == "file":
        if not isinstance(handoff, HandOff):
            raise OracleError("oracle.kind 'file' needs the campaign's hand-off folder")
        return FileOracle(handoff)
    raise OracleError(f"oracle.kind must be one of {', '.join(ORACLE_KINDS)}, got {kind!r}")
