"""The oracle named by `oracle.kind`, built for a prepared pool."""

from __future__ import annotations

from typing import TYPE_CHECKING

from baldflow.labeling.handoff import FileOracle, HandOff
from baldflow.labeling.oracles import Oracle, OracleError, PoolOracle

if TYPE_CHECKING:
    from baldflow.data.pool import CampaignPool

ORACLE_KINDS = ("simulated", "file", "label-studio")


def build_oracle(
    kind: str,
    *,
    pool: CampaignPool,
    handoff: HandOff | None = None,
) -> Oracle:
    """The oracle of the configured kind for a campaign's pool.

    The `simulated` oracle answers with the labels `pool` holds back. `handoff` is where the
    `file` and `label-studio` oracles find people's labels (a pull from Label Studio stores
    them there as a CSV import does).
    """
    if kind == "simulated":
        return PoolOracle(pool)
    if kind in ("file", "label-studio"):
        if not isinstance(handoff, HandOff):
            raise OracleError(f"oracle.kind {kind!r} needs the campaign's hand-off folder")
        return FileOracle(handoff, kind=kind)
    raise OracleError(f"oracle.kind must be one of {', '.join(ORACLE_KINDS)}, got {kind!r}")
