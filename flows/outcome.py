"""How a campaign or cycle flow run is named and what it returns: its result record and its
final Prefect state."""

from __future__ import annotations

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


def campaign_run_name() -> str:
    """The campaign flow run's name in the UI: the `campaign` argument, else params' name."""
    params = flow_run.parameters
    given = params.get("campaign")
    if given:
        return str(given)
    return str(((params.get("params") or {}).get("campaign") or {}).get("name") or "campaign")
