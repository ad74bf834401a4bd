"""The cycle flow: exactly one round of a workspace's campaign from its current state, then stop.

Meant to be triggered again and again (a schedule, a button in the Prefect UI): each trigger
completes at most one round, and one that finds the workspace busy is skipped, not queued.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Completed

from baldflow.flows.campaign import run_campaign
from baldflow.flows.outcome import final_state, run_name, tagged
from baldflow.workspace import WorkspaceLockedError


def load_cycle_config(
    workspace: str | Path,
    config: str | None,
    overrides: list[str] | None,
    campaign: str | None = None,
):
    """The parameters a cycle runs with: `config`, else the workspace's params.yaml; with
    `campaign`, that campaign's recorded parameters in between once it has started (as
    `run --campaign` does), so a deployed cycle resumes a campaign whatever params.yaml says."""
    from baldflow.config import load_config

    root = Path(workspace).resolve()
    path = config if config else (root / "params.yaml" if (root / "params.yaml").exists() else None)
    identity = None
    if campaign is not None:
        from baldflow.preflight import recorded_identity

        try:
            identity = recorded_identity(root, campaign)
        except LookupError:
            identity = None  # not started yet: its first cycle starts it from these parameters
    return load_config(path, overrides or [], identity=identity)


def _cycle_run_name() -> str:
    """`cycle <campaign> by <operator> in <workspace id>` (run_name); the workspace's folder
    name stands in for a campaign that no tag or parameter names."""
    params = flow_run.parameters
    campaign = params.get("campaign") or tagged("campaign")
    if not campaign:
        campaign = Path(str(params.get("workspace") or "workspace")).name
    return run_name(f"cycle {campaign}")


@flow(name="baldflow-cycle", flow_run_name=_cycle_run_name, validate_parameters=False)
def cycle_flow(
    workspace: str,
    config: str | None = None,
    overrides: list[str] | None = None,
    params: dict[str, Any] | None = None,
    campaign: str | None = None,
) -> Any:
    """Run one round of the workspace's campaign (round 0 first), or finish a labeled batch.

    With the `file` oracle a batch still waiting for labels makes the cycle stop at once in
    the state "WaitingForLabels"; once the labels are imported, the next cycle completes it.
    """
    from baldflow.workspace import offline_environment

    offline_environment()
    logger = get_run_logger()
    if params is None:
        params = load_cycle_config(workspace, config, overrides, campaign).to_dict()
    try:
        result = run_campaign(workspace, params, max_new_rounds=1)
    except WorkspaceLockedError as exc:
        # Another round is running here: this trigger has nothing to add, and waiting for the
        # lock would only stack rounds up behind it. Prefect's INFO line on the final state
        # ("Finished in state Skipped('<why>')") is the one line that says so and who holds it:
        # a busy workspace is ordinary, not a warning.
        return Completed(
            name="Skipped",
            message=str(exc),
            data={"stopped": "workspace-busy", "workspace": workspace, "message": str(exc)},
        )
    if result["stopped"] in ("rounds", "pool-empty") and not result["timings"]:
        logger.info(
            "campaign %s is complete (%s); raise campaign.rounds to go on",
            result["campaign"],
            result["stopped"],
        )
    return final_state(result)
