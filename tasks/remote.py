"""Tasks of a workspace shared through remotes: sync before a round, claim it after its commit.

A workspace without a git remote skips them (they return at once), so one machine pays nothing.
"""

from __future__ import annotations

from baldflow.faults import fault_point
from baldflow.tasks.base import REMOTE, baldflow_task
from baldflow.workspace import RoundCommit, Workspace
from baldflow.workspace import remote as remote_mod
from baldflow.workspace.tracking import Tracker

# A refused push is not retried: the claim task reports it as a lost race instead of raising.


@baldflow_task("sync-workspace", retry=REMOTE)
def sync_workspace(workspace: Workspace) -> list[str]:
    """Fetch the remote and fast-forward (or push what an earlier run left unpushed); notes.

    Safe to run twice: a clone level with its remote does nothing.
    """
    if remote_mod.remote_url(workspace) is None:
        return []
    return remote_mod.sync(workspace).notes


# Its fault points stay in the body: a workspace without a remote passes neither.
@baldflow_task(
    "claim-round", run_name="push round to the shared remote [round {round_index}]", retry=REMOTE
)
def claim_round(workspace: Workspace, commit: RoundCommit, round_index: int) -> str | None:
    """Push the committed round (data, then branch + tag atomically); None when it is the
    round's claim, else why another clone's round won. A push that already went through is a
    no-op, so a retry after a lost connection is safe."""
    if remote_mod.remote_url(workspace) is None:
        return None
    fault_point("claim-round:before", round_index)
    try:
        remote_mod.claim_round(workspace, commit.campaign, commit.round, commit.tag)
    except remote_mod.RoundTakenError as lost:
        return str(lost)
    fault_point("claim-round:pushed", round_index)
    return None


@baldflow_task(
    "discard-lost-round",
    run_name="take the other clone's round [round {round_index}]",
    retry=REMOTE,
)
def discard_lost_round(
    workspace: Workspace,
    tracker: Tracker,
    commit: RoundCommit,
    run_id: str | None,
    why: str,
    round_index: int,
) -> list[str]:
    """Close this clone's run of the round as KILLED (tagged with why), drop its commit and tag,
    and fast-forward to the remote. Safe to run twice: each step is a no-op once done."""
    if run_id:
        tracker.discard(run_id, why)
    return remote_mod.discard_lost_round(workspace, commit.campaign, commit.tag).notes
