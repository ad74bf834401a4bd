"""The staging area of workers that share nothing (`scale.staging`): what is left there."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from baldflow.compute.staging import StagedPool


def prune_staged_pools(
    staging: str, unused_days: float, *, dry_run: bool = False
) -> tuple[list[StagedPool], list[StagedPool]]:
    """(every pool staged under `staging`, those removed) where no round has staged a pool for
    `unused_days` days; with `dry_run`, those that would be removed, and nothing is.
    ConfigError for a location that is no s3:// URL or a negative number of days.

    Why a command and not the flow: a staged pool is shared by every campaign on the same pool
    content (its key is the content hash), so no one campaign knows that the others are done.
    """
    from baldflow.compute import staging as area
    from baldflow.config import ConfigError
    from baldflow.data.object_store import is_url

    if not is_url(staging):
        raise ConfigError(
            f"{staging!r} is not an s3://bucket/prefix URL: pools are staged only in an object "
            "store (scale.staging); a local staging directory holds no pools"
        )
    if not unused_days >= 0:  # also refuses NaN
        raise ConfigError(f"--unused-days must be >= 0, got {unused_days}")
    every = area.staged_pools(staging)
    removed = area.prune_pools(staging, dt.timedelta(days=unused_days), remove=not dry_run)
    return every, removed
