"""Tasks: open the workspace at its last completed round; version a round with DVC and git."""

from __future__ import annotations

import dataclasses

from baldflow.config import Config, campaign_identity, dump_yaml
from baldflow.labeling import HandOff
from baldflow.rounds import Labels, RoundRecord
from baldflow.tasks.base import LOCAL_FILES, STORE, baldflow_task
from baldflow.workspace import RoundCommit, Workspace, remote


@dataclasses.dataclass
class OpenedWorkspace:
    """A workspace ready for the campaign's next round, and what opening it had to do."""

    workspace: Workspace
    last_round: int | None
    notes: list[str]


# Safe to retry: creating completes what exists, recovery of a recovered workspace is a no-op.
@baldflow_task("open-workspace", retry=LOCAL_FILES)
def open_workspace(root: str, config: Config) -> OpenedWorkspace:
    """Create the workspace if needed, then bring the campaign to its last completed round.

    Repairs what an interrupted run left: a commit without its tag, files written after the
    last commit, hand-off files of a round that was committed; and refuses parameters that
    differ from the ones the campaign started with.
    """
    name = config.campaign.name
    notes: list[str] = []
    if not Workspace.is_ready(root):
        created = not Workspace.is_workspace(root)
        workspace = Workspace.init(root, params_text=dump_yaml(config))
        done = "created" if created else "completed the interrupted creation of"
        notes.append(f"{done} the workspace {workspace.root}")
    else:
        workspace = Workspace(root)
        if workspace.upgrade_marker():
            notes.append(f"gave the workspace the id {workspace.workspace_id}")
    recovery = workspace.recover(name)
    if recovery.discarded or recovery.retagged:
        notes.append(
            f"campaign {name}: repaired an interrupted round (discarded leftovers: "
            f"{recovery.discarded}, re-tagged: {recovery.retagged}); resuming after round "
            f"{recovery.last_round}"
        )
    if remote.remote_url(workspace) is not None:
        # Before MLflow is repaired from git: a round this clone committed but lost to another
        # clone must be gone from git first, or its run would be completed as committed.
        notes.extend(remote.sync(workspace).notes)
        recovery = dataclasses.replace(recovery, last_round=workspace.last_round(name))
    workspace.check_campaign_params(name, campaign_identity(config))
    handoff = HandOff(workspace.campaign_dir(name), name)
    cleared = handoff.clear_committed(recovery.last_round)
    if cleared:
        rounds = ", ".join(str(r) for r in cleared)
        notes.append(
            f"campaign {name}: removed the hand-off files of committed round(s) {rounds} "
            "that a stopped run left behind"
        )
    return OpenedWorkspace(workspace, recovery.last_round, notes)


# A retry first discards what the failed attempt wrote, so it cannot label anything twice; a
# retry after the commit went through gets that commit back.
@baldflow_task(
    "version-round",
    run_name="version labeled set [round {round_index}]",
    retry=STORE,
    fault_before=True,
    fault_after=True,
)
def version_round(
    workspace: Workspace,
    record: RoundRecord,
    labels: Labels,
    identity: dict,
    flow_run_id: str,
    round_index: int,
    pool_manifest: dict | None = None,
    score_table: str | None = None,
) -> RoundCommit:
    workspace.recover(record.campaign)
    return workspace.commit_round(
        record.campaign,
        record.round,
        record.ledger_rows(labels, flow_run_id=flow_run_id),
        summary=record.summary(),
        identity=identity,
        trailers=record.trailers(flow_run_id),
        pool_manifest=pool_manifest,
        score_table=score_table,
    )
