"""Serve the cycle flow as a Prefect deployment on a schedule (needs a persistent server)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prefect.types.entrypoint import EntrypointType

from baldflow.flows.cycle import cycle_flow
from baldflow.flows.deploy import cycle_overrides, deployment_name

__all__ = ["deployment_name", "serve_cycle"]


def serve_cycle(
    workspace: str | Path,
    campaign: str,
    *,
    cron: str | None = None,
    interval: float | None = None,
    config: str | None = None,
    overrides: Sequence[str] = (),
    resume: bool = False,
) -> None:
    """Create or update the deployment, then run its scheduled cycles until interrupted.

    `resume` (`--campaign NAME`): every cycle advances `campaign` with its recorded parameters,
    as `cycle --campaign` and `deploy` do, whatever params.yaml names or says.
    """
    if (cron is None) == (interval is None):
        raise ValueError("give exactly one of cron or interval")
    root = str(Path(workspace).resolve())
    if resume:
        overrides = cycle_overrides(campaign, overrides)
    cycle_flow.serve(
        name=deployment_name(campaign),
        cron=cron,
        interval=interval,
        parameters={
            "workspace": root,
            "config": str(Path(config).resolve()) if config else None,
            "overrides": list(overrides),
            "campaign": campaign if resume else None,
        },
        description=f"One active-learning round of campaign {campaign} in {root} per trigger.",
        tags=["baldflow", campaign],
        # One cycle at a time from this process; the workspace lock covers other processes.
        limit=1,
        # The module path resolves through the installed package, whatever the cwd of a run.
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
