"""Tasks: bring the workspace to the last completed round; version a round with DVC and git."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from baldflow.workspace import LedgerRow, Recovery, RoundCommit, Workspace


@task(name="recover-workspace", cache_policy=NO_CACHE)
def recover_workspace(workspace: Workspace, campaign: str) -> Recovery:
    return workspace.recover(campaign)


# A retry first discards what the failed attempt wrote, so it cannot label anything twice.
@task(
    name="version-round",
    task_run_name="version labeled set [round {round_index}]",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=1,
)
def version_round(
    workspace: Workspace,
    campaign: str,
    round_index: int,
    rows: Sequence[LedgerRow],
    summary: Mapping[str, Any],
    identity: Mapping[str, Any],
    trailers: Mapping[str, str],
) -> RoundCommit:
    workspace.recover(campaign)
    return workspace.commit_round(
        campaign, round_index, rows, summary=summary, identity=identity, trailers=trailers
    )
