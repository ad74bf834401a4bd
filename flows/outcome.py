"""How a campaign or cycle flow run is named and what it returns: its result record and its
final Prefect state."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from prefect.runtime import flow_run
from prefect.states import Completed

from baldflow.labeling import WaitingForLabels


def campaign_result(
    *,
    campaign: str,
    workspace: Any,
    stopped: str,
    curve: list,
    timings: list,
    tracking_uri: str,
    experiment: str,
    parent_run_id: str,
    flow_run_id: str,
    waiting: WaitingForLabels | None,
) -> dict[str, Any]:
    """How the run ended ("rounds", "round-limit", "pool-empty", "waiting-for-labels") and
    where everything it recorded lives."""
    result = {
        "campaign": campaign,
        "workspace": str(workspace.root),
        "stopped": stopped,
        "last_round": workspace.last_round(campaign),
        "rounds": curve,
        "timings": timings,
        "tracking_uri": tracking_uri,
        "experiment": experiment,
        "parent_run_id": parent_run_id,
        "flow_run_id": flow_run_id,
    }
    if waiting is not None:
        result["waiting_for_labels"] = {
            "round": waiting.pending.round,
            "sheet": waiting.sheet,
            "batch_size": len(waiting.pending.sample_ids),
            "studio": waiting.studio,
            "message": str(waiting),
        }
    return result


def final_state(result: dict[str, Any]) -> Any:
    """The flow's return value: a named Completed state while a batch waits for labels.

    The Prefect UI then shows "WaitingForLabels" rather than a plain "Completed".
    """
    waiting = result.get("waiting_for_labels")
    if waiting is None:
        return result
    return Completed(name="WaitingForLabels", message=waiting["message"], data=result)


# Prefect tags that say whose run a flow run is: `<key>:<value>`, set by the app layer around
# the flow (and on a deployment), read back by the run names below.
IDENTITY_KEYS = ("campaign", "operator", "workspace")


def identity_tags(workspace: str | Path, campaign: str, tracking_uri: str | None) -> list[str]:
    """The tags of a flow run of `campaign` in `workspace`: campaign, operator (as the runs in
    MLflow name them) and the workspace id that every clone of a shared workspace shares."""
    from baldflow.workspace import Workspace
    from baldflow.workspace.remote import operator

    root = Path(workspace)
    ws = Workspace(root) if Workspace.is_ready(root) else None
    tags = {"campaign": campaign, "operator": operator(ws, tracking_uri)}
    if ws is not None:
        tags["workspace"] = ws.workspace_id
    return [f"{key}:{value}" for key, value in tags.items()]


def identified(
    workspace: str | Path, campaign: str, tracking_uri: str | None
) -> contextlib.AbstractContextManager:
    """Prefect's tags context with identity_tags: the flow run started inside it (and its
    tasks) carry them, and run_name reads them back."""
    from prefect import tags

    return tags(*identity_tags(workspace, campaign, tracking_uri))


def tagged(key: str) -> str:
    for tag in flow_run.tags or ():
        if tag.startswith(f"{key}:"):
            return tag.split(":", 1)[1]
    return ""


def run_name(what: str) -> str:
    """`what by <operator> in <workspace id>`: a list of flow runs says whose run is whose."""
    who, workspace = tagged("operator"), tagged("workspace")
    if who:
        what += f" by {who}"
    if workspace:
        what += f" in {workspace[:8]}"
    return what


def campaign_run_name() -> str:
    """The campaign flow run's name in the UI: the `campaign` argument, else params' name,
    then whose run it is (run_name)."""
    params = flow_run.parameters
    given = params.get("campaign") or (
        ((params.get("params") or {}).get("campaign") or {}).get("name")
    )
    return run_name(str(given or "campaign"))
