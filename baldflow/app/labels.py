"""Labels from people: the batch waiting for them, importing a file, pulling from Label Studio."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from baldflow.app.campaigns import prepare_prefect, say_where_on_interrupt, start_prefect_api
from baldflow.app.outcomes import CampaignOutcome, LabelOutcome, Progress, say_nothing
from baldflow.app.workspaces import workspace_root

if TYPE_CHECKING:
    from baldflow.labeling import HandOff, PendingRound




# ---------------------------------------------------------------------------- labels
def pending_batch(
    workspace: str | Path | None = None, campaign: str | None = None
) -> tuple[HandOff, PendingRound]:
    """The one batch waiting for labels (of `campaign`, if given): its hand-off and record."""
    from baldflow.labeling import NoPendingBatchError, pending_batches

    ws_root = workspace_root(workspace)
    batches = pending_batches(ws_root)
    if campaign is not None:
        batches = [(h, p) for h, p in batches if h.campaign == campaign]
    if not batches:
        which = f"campaign {campaign!r}" if campaign else "any campaign"
        raise NoPendingBatchError(f"no batch of {which} is waiting for labels in {ws_root}")
    if len(batches) > 1:
        names = ", ".join(h.campaign for h, _ in batches)
        raise NoPendingBatchError(f"batches of {names} are waiting for labels: pass --campaign")
    return batches[0]


def import_labels(
    file: str | Path,
    *,
    workspace: str | Path | None = None,
    campaign: str | None = None,
    partial: bool = False,
    labeled_by: str | None = None,
    complete: bool = True,
    progress: Progress = say_nothing,
) -> LabelOutcome:
    """Check a label file (sample_id, label) against the batch waiting for labels and store
    its labels; the import that completes the batch completes the round (DVC, git, MLflow)
    unless `complete` is False. A refused file raises LabelImportError and stores nothing.

    labeled_by: who labeled, for the ledger (None: $BALDFLOW_OPERATOR, the MLflow user of an
    authenticated tracking server, the workspace's git identity, else login@host).
    """
    from baldflow.labeling import import_labels as store_labels
    from baldflow.workspace import Workspace, remote, workspace_lock

    ws_root = workspace_root(workspace)
    handoff, pending = pending_batch(ws_root, campaign)
    with workspace_lock(ws_root):
        tracking_uri = ((pending.params.get("tracking") or {}).get("mlflow_uri")) or None
        by = labeled_by or remote.operator(Workspace(ws_root), tracking_uri)
        result = store_labels(handoff, file, partial=partial, labeled_by=by)
        progress(
            f"imported {result.added} label(s) for round {result.round} of "
            f"{handoff.campaign}: {result.labeled} of {result.batch_size} labeled"
        )
        completed = None
        if result.complete and complete:
            completed = _complete_round(ws_root, handoff, pending, progress)
    return LabelOutcome(
        handoff.campaign, result.round, result.added, result.labeled, result.batch_size, completed
    )


def pull_labels(
    *,
    workspace: str | Path | None = None,
    campaign: str | None = None,
    resend: bool = False,
    complete: bool = True,
    progress: Progress = say_nothing,
) -> LabelOutcome:
    """With oracle `label-studio`: fetch the pending batch's annotations from its Label Studio
    project (with `resend`, first send deleted tasks again); once every task is annotated the
    labels are stored and, unless `complete` is False, the round completes. Annotations that
    cannot be accepted raise LabelImportError and store nothing."""
    from functools import partial

    from baldflow.config import ConfigError, validate
    from baldflow.labeling.label_studio import client_for
    from baldflow.labeling.studio_rounds import pull_annotations, send_batch
    from baldflow.stack.label_studio import workspace_connection
    from baldflow.workspace import Workspace, workspace_lock

    ws_root = workspace_root(workspace)
    handoff, pending = pending_batch(ws_root, campaign)
    with workspace_lock(ws_root):
        # The batch's own parameters: where its server is and how disagreements are settled.
        config = validate(dict(pending.params))
        if config.oracle.kind != "label-studio":
            raise ConfigError(
                f"campaign {handoff.campaign!r} hands its batches out as files (oracle.kind "
                f"{config.oracle.kind!r}): use `baldflow label import`"
            )
        client = client_for(config.oracle.label_studio, partial(workspace_connection, ws_root))
        if resend:
            with Workspace(ws_root) as ws:
                workspace_id = ws.workspace_id
            sent = send_batch(
                client, handoff, pending, workspace_id=workspace_id, images=None, resend=True
            )
            progress(
                f"sent {sent.imported} task(s) again to Label Studio project {sent.project_id}"
            )
        pulled = pull_annotations(
            client, handoff, pending, conflicts=config.oracle.label_studio.conflicts
        )
        progress(
            f"round {pulled.round} of {handoff.campaign}: {pulled.annotated} of "
            f"{pulled.batch_size} annotated in Label Studio project {pulled.project_id} "
            f"({client.project_address(pulled.project_id)})"
        )
        for decision in pulled.decisions:
            progress(f"  {decision}")
        completed = None
        if pulled.complete and complete:
            completed = _complete_round(ws_root, handoff, pending, progress)
    return LabelOutcome(
        handoff.campaign,
        pulled.round,
        pulled.annotated,
        pulled.annotated,
        pulled.batch_size,
        completed,
        tuple(pulled.decisions),
    )


def _complete_round(
    ws_root: Path, handoff: HandOff, pending: PendingRound, progress: Progress
) -> CampaignOutcome:
    """A labeled batch's round completed by one cycle (under the caller's workspace lock)."""
    prepare_prefect(ws_root)
    rounds = (pending.params.get("campaign") or {}).get("rounds")
    if rounds is not None:
        say_where_on_interrupt(ws_root, handoff.campaign, int(rounds))
    progress("batch complete; completing the round (version, track)...")
    start_prefect_api(ws_root, progress)
    from baldflow.flows.cycle import cycle_flow

    return CampaignOutcome(cycle_flow(workspace=str(ws_root), params=pending.params))


