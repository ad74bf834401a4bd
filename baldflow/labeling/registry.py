"""The oracle named by `oracle.kind`, built for a prepared pool."""

from __future__ import annotations

from collections.abc import Sequence

from baldflow.labeling.handoff import FileOracle, HandOff
from baldflow.labeling.oracles import Oracle, OracleError, SimulatedOracle

ORACLE_KINDS = ("simulated", "file", "label-studio")


def build_oracle(
    kind: str,
    *,
    pool_ids: Sequence[str],
    pool_labels: Sequence[int],
    handoff: HandOff | None = None,
) -> Oracle:
    """The oracle of the configured kind for a prepared pool.

    `handoff` is where the `file` and `label-studio` oracles find people's labels (a pull
    from Label Studio stores them there as a CSV import does).
    """
    if kind == "simulated":
        labels = {sid: int(y) for sid, y in zip(pool_ids, pool_labels, strict=True)}
        return SimulatedOracle(labels)
    if kind in ("file", "label-studio"):
        if not isinstance(handoff, HandOff):
            raise OracleError(f"oracle.kind {kind!r} needs the campaign's hand-off folder")
        return FileOracle(handoff, kind=kind)
    raise OracleError(f"oracle.kind must be one of {', '.join(ORACLE_KINDS)}, got {kind!r}")
