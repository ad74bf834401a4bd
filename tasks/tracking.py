"""Tasks: MLflow runs of the campaign and its rounds, and the Prefect artifact of each batch."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from baldflow.workspace.tracking import Tracker

# SQLite can be briefly locked by MLflow's own background work; a retry gets past that.
_RETRY = {"retries": 2, "retry_delay_seconds": 1}


@task(name="start-tracking", cache_policy=NO_CACHE, **_RETRY)
def start_campaign_tracking(
    tracker: Tracker,
    campaign: str,
    params: Mapping[str, Any],
    committed: Mapping[str, Mapping[str, Any]],
) -> tuple[str, list[str]]:
    """The parent run's id, and the ids of round runs a killed process left open."""
    orphans = tracker.close_orphans(campaign, committed)
    return tracker.campaign_run(campaign, params), orphans


@task(
    name="start-round-run",
    task_run_name="start MLflow run [round {round_index}]",
    cache_policy=NO_CACHE,
    **_RETRY,
)
def start_round_run(
    tracker: Tracker,
    parent_run_id: str,
    campaign: str,
    round_index: int,
    params: Mapping[str, Any],
    training_set: Mapping[str, Any],
) -> str:
    """A round's MLflow run, with the DVC version of the labeled set it trains on as input."""
    run_id = tracker.start_round(parent_run_id, campaign, round_index, params)
    tracker.log_training_set(run_id, **training_set)
    return run_id


@task(
    name="track-round",
    task_run_name="track round [round {round_index}]",
    cache_policy=NO_CACHE,
    **_RETRY,
)
def track_round(
    tracker: Tracker,
    run_id: str,
    round_index: int,
    metrics: Mapping[str, float],
    tags: Mapping[str, str],
    acquired: Sequence[Mapping[str, Any]],
    model_state: Mapping[str, Any] | None,
    model_spec: Mapping[str, Any] | None,
    *,
    started: float,
    seconds_compute: float,
    seconds_label: float,
) -> dict[str, float]:
    """Log the round and close its run; return its wall time and the bookkeeping share.

    `started` is the round's time.perf_counter() start in this process; bookkeeping is all
    the round's wall time that was not training, evaluating, scoring, selecting or labeling.
    """
    tracker.log_round(
        run_id,
        round_index=round_index,
        metrics=metrics,
        tags=tags,
        acquired=acquired,
        model_state=model_state,
        model_spec=model_spec,
    )
    seconds_round = time.perf_counter() - started
    timing = {
        "seconds_round": seconds_round,
        "seconds_bookkeeping": seconds_round - seconds_compute - seconds_label,
    }
    tracker.finish_round(run_id, round_index, timing)
    return timing


@task(
    name="publish-batch",
    task_run_name="publish batch [round {round_index}]",
    cache_policy=NO_CACHE,
)
def publish_batch(
    campaign: str, round_index: int, acquired: Sequence[Mapping[str, Any]], description: str
) -> None:
    # Artifact keys accept lowercase letters, digits and dashes only; campaign names do too.
    create_table_artifact(
        key=f"{campaign}-round-{round_index:04d}",
        table=[dict(row) for row in acquired],
        description=description,
    )


@task(name="finish-campaign", cache_policy=NO_CACHE, **_RETRY)
def finish_campaign(
    tracker: Tracker, parent_run_id: str, campaign: str, curve: Sequence[Mapping[str, Any]]
) -> None:
    tracker.log_learning_curve(parent_run_id, curve, title=f"{campaign}: test accuracy")
    tracker.end(parent_run_id)
