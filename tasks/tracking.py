"""Tasks: MLflow runs of the campaign and its rounds, and the Prefect artifact of each batch.

Each is safe to run twice: runs are looked up before they are created, and what is logged
again overwrites (see Tracker).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact

from baldflow.rounds import Labels, RoundRecord
from baldflow.tasks.base import STORE, baldflow_task
from baldflow.workspace import RoundCommit
from baldflow.workspace.tracking import Tracker

if TYPE_CHECKING:
    from baldflow.workspace.registry import RoundVersion

# SQLite can be briefly locked by MLflow's own background work; a retry (STORE) gets past that.


@baldflow_task("start-tracking", retry=STORE)
def start_campaign_tracking(
    tracker: Tracker,
    campaign: str,
    params: Mapping[str, Any],
    committed: Mapping[int, Mapping[str, Any]],
    anchored: str | None = None,
) -> tuple[str, list[str]]:
    """The parent run's id, and notes on what repairing the round runs (and their registered
    models) after a stop did. `anchored`: the parent run git recorded (round 0's ledger rows),
    reopened when this store has it.

    `params` is the campaign's whole configuration: its tracking.register_model is noted on the
    parent run, where the round tasks read it.
    """
    done = tracker.repair(campaign, committed)
    notes = []
    if done["repaired"]:
        notes.append(
            f"completed the MLflow runs of {len(done['repaired'])} committed round(s) from git "
            f"(a stopped run left them unfinished): {', '.join(done['repaired'])}"
        )
    if done["killed"]:
        notes.append(
            f"marked {len(done['killed'])} MLflow run(s) that a killed run left open as KILLED"
        )
    if done.get("retired"):
        notes.append(
            f"retired {len(done['retired'])} MLflow run(s) parked for labels of a round another "
            f"clone committed first (now KILLED): {', '.join(done['retired'])}"
        )
    # Imported here: the registry imports mlflow.pyfunc, seconds a process need not pay unless
    # it tracks.
    from baldflow.workspace import registry

    parent_run_id = tracker.campaign_run(campaign, params, anchored)
    if anchored and parent_run_id == anchored:
        strays = tracker.retire_stray_campaign_runs(campaign, anchored)
        if strays["retired"]:
            notes.append(
                f"retired {len(strays['retired'])} stray parent run(s) of campaign {campaign} "
                "that runs stopped before their round 0 left beside the campaign's "
                f"{anchored}: {', '.join(strays['retired'])}"
            )
        if strays["failed"]:
            notes.append(
                "could not retire stray parent run(s) (the tracking server refused; an "
                f"operator with MANAGE on the experiment can): {', '.join(strays['failed'])}"
            )
    register = bool(params.get("tracking", {}).get("register_model", True))
    registry.record_switch(tracker, parent_run_id, register)
    if register:
        notes.extend(_repair_registry(tracker, campaign, committed))
    return parent_run_id, notes


def _repair_registry(
    tracker: Tracker, campaign: str, committed: Mapping[int, Mapping[str, Any]]
) -> list[str]:
    from baldflow.workspace import registry

    done = registry.repair_registrations(tracker, campaign, committed)
    notes = []
    if done.registered:
        notes.append(
            f"registered the models of {len(done.registered)} committed round(s) that had no "
            f"version of {registry.registered_model_name(campaign)} (a stopped run or "
            f"tracking.register_model off): rounds {', '.join(map(str, done.registered))}"
        )
    if done.without_model:
        notes.append(
            f"round(s) {', '.join(map(str, done.without_model))} cannot be registered: their "
            "MLflow runs have no model files (the process stopped before uploading them)"
        )
    for round_index, why in done.failed.items():
        notes.append(f"round {round_index} cannot be registered: {why}")
    return notes


@baldflow_task(
    "start-round-run",
    run_name="start MLflow run [round {round_index}]",
    retry=STORE,
    fault_before=True,
    fault_after=True,
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
    run_id = tracker.round_run(parent_run_id, campaign, round_index, params)
    tracker.log_training_set(run_id, **training_set)
    return run_id


@baldflow_task(
    "park-round-run",
    run_name="park MLflow run while people label [round {round_index}]",
    retry=STORE,
    fault_after=True,
)
def park_round_run(tracker: Tracker, record: RoundRecord, round_index: int) -> None:
    metrics = {"test_accuracy": record.test_accuracy, "test_nll": record.test_nll}
    tracker.park(record.run_id, metrics, round_index)


@baldflow_task(
    "unpark-round-run",
    run_name="resume MLflow run with people's labels [round {round_index}]",
    retry=STORE,
    fault_after=True,
)
def unpark_round_run(tracker: Tracker, run_id: str, round_index: int) -> None:
    tracker.unpark(run_id)


@baldflow_task(
    "track-round",
    run_name="track round [round {round_index}]",
    retry=STORE,
    fault_before=True,
    fault_after=True,
)
def track_round(
    tracker: Tracker,
    record: RoundRecord,
    commit: RoundCommit,
    labels: Labels,
    acquired: Sequence[Mapping[str, Any]],
    model_state: Mapping[str, Any] | None,
    flow_run_id: str,
    round_index: int,
    *,
    started: float,
    seconds_compute: float,
) -> dict[str, float]:
    """Log the round and close its run; return its wall time and the bookkeeping share.

    `started` is the round's time.perf_counter() start in this process; bookkeeping is all
    the round's wall time that was not training, evaluating, scoring, selecting or labeling
    (`seconds_compute`: the part of the compute done in this process).
    """
    tracker.log_round(
        record.run_id,
        round_index=round_index,
        metrics=record.metrics(commit, labels),
        tags=record.tags(commit, flow_run_id),
        acquired=acquired,
        model_state=model_state,
        model_spec=record.model_spec,
    )
    registering = time.perf_counter()
    registered = _register(tracker, record, commit, model_state, flow_run_id)
    seconds_register = time.perf_counter() - registering
    seconds_round = time.perf_counter() - started
    timing = {
        "seconds_round": seconds_round,
        "seconds_bookkeeping": seconds_round - seconds_compute - labels.seconds,
    }
    extra = {"seconds_register": seconds_register} if registered else {}
    tracker.finish_round(record.run_id, round_index, {**timing, **extra})
    return timing


def _register(
    tracker: Tracker,
    record: RoundRecord,
    commit: RoundCommit,
    model_state: Mapping[str, Any] | None,
    flow_run_id: str,
) -> RoundVersion | None:
    """The round's model version (None when registering is off or there is no model).

    Registered before the run is finished: a process that stops in between leaves the round's
    run unfinished, and the next start repairs both.
    """
    from baldflow.workspace import registry

    if model_state is None or not record.model_spec:
        return None
    if not registry.switched_on(tracker, record.run_id):
        return None
    try:
        return registry.register_round_state(
            tracker,
            campaign=record.campaign,
            round_index=record.round,
            run_id=record.run_id,
            tags=record.tags(commit, flow_run_id),
            model_state=model_state,
            model_spec=record.model_spec,
        )
    except registry.RegistryError as error:
        # Retrying cannot fix what the run lacks; the round itself is complete and tracked.
        get_run_logger().warning("round %d: model not registered: %s", record.round, error)
        return None


@baldflow_task("adopt-campaign-run", retry=STORE)
def adopt_campaign_run(tracker: Tracker, orphan: str, anchored: str) -> str:
    """Switch to the parent run another clone's round 0 recorded; retire this clone's own."""
    return tracker.adopt_campaign_run(orphan, anchored)


@baldflow_task("retire-campaign-run", retry=STORE)
def retire_campaign_run(tracker: Tracker, run_id: str, why: str) -> bool:
    """Retire a parent run that no committed round names (its run stopped before round 0)."""
    return tracker.retire_campaign_run(run_id, why)


@baldflow_task("end-run", retry=STORE)
def end_run(tracker: Tracker, run_id: str, status: str) -> None:
    """Close a run as FAILED or KILLED when its round or campaign stopped on an error."""
    tracker.end(run_id, status)


@baldflow_task(
    "publish-batch", run_name="publish batch [round {round_index}]", retry=STORE, fault_after=True
)
def publish_batch(
    campaign: str, round_index: int, acquired: Sequence[Mapping[str, Any]], description: str
) -> None:
    # Artifact keys accept lowercase letters, digits and dashes only; campaign names do too.
    # Publishing again adds a version of the same key, which is what a retry should do.
    create_table_artifact(
        key=f"{campaign}-round-{round_index:04d}",
        table=[dict(row) for row in acquired],
        description=description,
    )


@baldflow_task("finish-campaign", retry=STORE)
def finish_campaign(
    tracker: Tracker, parent_run_id: str, campaign: str, curve: Sequence[Mapping[str, Any]]
) -> None:
    tracker.log_learning_curve(parent_run_id, curve, title=f"{campaign}: test accuracy")
    tracker.end(parent_run_id)
