"""Task: mark campaign flow runs that a killed process left "Running" as Crashed."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
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


@task(name="close-stale-flow-runs", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=1)
def close_stale_flow_runs(flow_name: str, workspace: str, current_flow_run_id: str) -> int:
    """Crash the other live-looking runs of this flow on this workspace; return how many.

    The caller holds the workspace lock, so no other process can be running a campaign here:
    any flow run for this workspace still "Running" or "Pending" was SIGKILLed and never told
    the server.
    """
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
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
