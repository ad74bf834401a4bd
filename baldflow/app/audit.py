"""Reading what happened: the ledger, one sample's story, a round, a diff, the report, status
and the consistency check."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from baldflow.app.outcomes import CampaignStatus, VerifyReport, WaitingBatch, WorkspaceStatus
from baldflow.app.workspaces import workspace_root

if TYPE_CHECKING:
    from baldflow.workspace import LedgerRow




# ---------------------------------------------------------------------------- audit
def _existing_workspace(workspace: str | Path | None) -> Path:
    from baldflow.workspace import Workspace

    ws_root = workspace_root(workspace)
    if not Workspace.is_workspace(ws_root):
        raise FileNotFoundError(f"{ws_root} is not a baldflow workspace (run `baldflow init`)")
    return ws_root


def history(
    workspace: str | Path | None = None,
    *,
    campaign: str | None = None,
    round: int | None = None,
    sample: str | None = None,
) -> list[LedgerRow]:
    """The ledger's rows (one per acquired sample), filtered by campaign, round, sample id."""
    from baldflow.workspace import Workspace

    ws_root = _existing_workspace(workspace)
    ws = Workspace(ws_root)
    names = ws.campaigns()
    if campaign is not None:
        if campaign not in names:
            known = ", ".join(names) or "none yet"
            raise LookupError(f"campaign {campaign!r} is not in {ws_root} (campaigns: {known})")
        names = [campaign]
    rows = []
    for name in names:
        rows.extend(ws.ledger(name))
    if round is not None:
        rows = [r for r in rows if r.round == round]
    if sample is not None:
        rows = [r for r in rows if r.sample_id == sample]
    return rows


def sample_story(
    sample: str, *, workspace: str | Path | None = None, campaign: str | None = None
) -> dict[str, Any]:
    """One sample's whole story: the round that acquired it, its score, key and rank in every
    round whose pool scores were kept. An id not in the pool raises AuditError."""
    from baldflow.audit.queries import sample_story as story

    return story(workspace_root(workspace), sample, campaign)


def show_round(
    round: int,
    *,
    workspace: str | Path | None = None,
    campaign: str | None = None,
) -> dict[str, Any]:
    """One completed round: its batch, class histogram, tag, commit and MLflow run."""
    from baldflow.audit import queries

    return queries.show_round(workspace_root(workspace), round, campaign)


def diff_rounds(
    from_round: int,
    to_round: int,
    *,
    workspace: str | Path | None = None,
    campaign: str | None = None,
) -> dict[str, Any]:
    """What the labeled set gained (and, if history was rewritten, lost) between two rounds,
    read through DVC at both tags."""
    from baldflow.audit import queries

    return queries.diff_rounds(workspace_root(workspace), from_round, to_round, campaign)


def write_report(
    *,
    workspace: str | Path | None = None,
    campaign: str | None = None,
    output: str | Path | None = None,
) -> Path:
    """A self-contained HTML report of a campaign; its path."""
    from baldflow.audit.report import write_report as write

    return Path(write(workspace_root(workspace), campaign, output))


def status(workspace: str | Path | None = None) -> WorkspaceStatus:
    """Every campaign of the workspace (rounds done, labeled count, latest accuracy and tag)
    and every batch waiting for labels."""
    import yaml

    from baldflow.labeling import pending_batches
    from baldflow.labeling.label_studio import project_address
    from baldflow.labeling.studio_rounds import StudioLink
    from baldflow.workspace import Workspace

    ws_root = _existing_workspace(workspace)
    ws = Workspace(ws_root)
    campaigns = []
    for name in ws.campaigns():
        rounds = ws.rounds_summary(name)
        done = ws.completed_rounds(name)
        accuracy = next(
            (float(r["test_accuracy"]) for r in reversed(rounds) if r.get("test_accuracy")), None
        )
        params_file = ws.campaign_dir(name) / "campaign.yaml"
        params = yaml.safe_load(params_file.read_text()) if params_file.exists() else {}
        campaigns.append(
            CampaignStatus(
                campaign=name,
                strategy=(params.get("acquisition") or {}).get("strategy"),
                rounds_done=done[-1] if done else None,
                # The campaign's length as it records it (None in records older than that).
                rounds_asked=(params.get("campaign") or {}).get("rounds"),
                labeled=len(ws.labeled(name)),
                latest_test_accuracy=accuracy,
                latest_tag=f"{name}/round-{done[-1]:04d}" if done else None,
            )
        )
    lengths = {c.campaign: c.rounds_asked for c in campaigns}
    waiting = []
    for handoff, pending in pending_batches(ws_root):
        link = StudioLink.load(handoff)
        sent = link.rounds.get(str(pending.round))
        project = sent["project_id"] if sent else None
        waiting.append(
            WaitingBatch(
                campaign=handoff.campaign,
                round=pending.round,
                imported=len(set(handoff.imported(pending.round)) & set(pending.sample_ids)),
                batch_size=len(pending.sample_ids),
                sheet=handoff.sheet_path(pending.round),
                studio_project=project,
                studio_address=project_address(link.url, project) if sent else None,
                rounds_asked=lengths.get(handoff.campaign),
            )
        )
    return WorkspaceStatus(ws_root, campaigns, waiting)


def verify(
    workspace: str | Path | None = None,
    *,
    campaign: str | None = None,
    tracking_uri: str | None = None,
    experiment: str | None = None,
) -> VerifyReport:
    """Check a workspace at rest: tags, the labeled sets DVC versioned, the ledger and the
    MLflow runs agree. Takes the workspace lock (WorkspaceLockedError while a run writes)."""
    from baldflow.workspace import workspace_lock
    from baldflow.workspace.consistency import check_workspace

    ws_root = _existing_workspace(workspace)
    if tracking_uri is None or experiment is None:
        from baldflow.config import load_config

        params = ws_root / "params.yaml"
        tracking = load_config(params if params.exists() else None, check_names=False).tracking
        tracking_uri = tracking_uri or tracking.mlflow_uri
        experiment = experiment or tracking.experiment
    # A run writing to the workspace breaks the rules mid-round: judge it only at rest.
    with workspace_lock(ws_root):
        found = check_workspace(
            ws_root,
            [campaign] if campaign else None,
            tracking_uri=tracking_uri,
            experiment=experiment,
        )
    return VerifyReport(ws_root, found)
