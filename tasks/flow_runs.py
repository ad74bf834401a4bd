"""Task: mark campaign flow runs that a killed process left "Running" as Crashed."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.states import Crashed

from baldflow.tasks.base import baldflow_task

# The flows that write to a workspace: a killed cycle is as stale as a killed campaign.
WORKSPACE_FLOWS = ("baldflow-campaign", "baldflow-cycle")


@baldflow_task("close-stale-flow-runs")
def close_stale_flow_runs(workspace: str, current_flow_run_id: str) -> int:
    """Crash the other live-looking flow runs on this workspace; return how many.

    The caller holds the workspace lock, so no other process can be running a campaign here:
    any flow run for this workspace still "Running" or "Pending" was SIGKILLed and never told
    the server. Tidying the server's view of old runs must never stop a campaign: a failure
    is logged and counts as none.
    """
    try:
        return _crash_stale_runs(workspace, current_flow_run_id)
    except Exception as exc:  # noqa: BLE001
        get_run_logger().warning("could not check for flow runs left by a killed process: %s", exc)
        return 0


def _crash_stale_runs(workspace: str, current_flow_run_id: str) -> int:
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=list(WORKSPACE_FLOWS))),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING])
                )
            ),
            # The 3.8 sync client sends a null sort, which the server rejects; name one.
            sort=FlowRunSort.ID_DESC,
            limit=200,
        )
        here = Path(workspace).resolve()
        stale = [
            run
            for run in runs
            if str(run.id) != current_flow_run_id
            and Path(str((run.parameters or {}).get("workspace", ""))).resolve() == here
        ]
        for run in stale:
            client.set_flow_run_state(
                run.id,
                Crashed(message="the process running this campaign was killed; resumed later"),
                force=True,
            )
    return len(stale)
