"""Whether a campaign has nothing left to do, decided from the workspace alone (git tags, the
hand-off folder, the MLflow store read as a file), so re-running a finished campaign answers
in about a second with no Prefect server and no flow run recorded.

Only a sure "nothing to do" counts: anything that a run would still repair (a round a killed
run left, a batch people labeled, an MLflow run a stopped run left unfinished) or that cannot be
checked cheaply (a tracking server, an unknown store schema) goes the usual way, through the
flow, which repairs it and says so.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path
from typing import Any

from baldflow.workspace.repo import DATA_DIR, TO_LABEL_DIR, Workspace, WorkspaceError
from baldflow.workspace.tracking import (
    REQUIRED_ROUND_METRICS,
    TAG_CAMPAIGN,
    TAG_KIND,
    TAG_ROUND,
    TAG_WORKSPACE,
    read_only_store,
    sqlite_store_path,
    tracker_for,
)


@dataclasses.dataclass(frozen=True)
class Finished:
    """A campaign with nothing to do: all its rounds committed and their tracking complete,
    or (`waiting`) its next batch still out with people, who have not labeled all of it."""

    campaign: str
    last_round: int | None
    rounds: list[dict[str, str]]
    tracking_uri: str
    # The round whose batch people are labeling; None when every round is done.
    waiting: int | None = None
    # A batch out for a round past the campaign's length (a run that asked for more rounds
    # handed it out), which a run for this length leaves alone: the round, or None.
    beyond: int | None = None


def finished_campaign(
    workspace: str | Path,
    config: Any,
    *,
    batch_round: int | None = None,
    labels_missing: bool = False,
) -> Finished | None:
    """The campaign of `config` when a run would have nothing to do, or None when it has.

    `batch_round` is the round of the batch in the campaign's hand-off folder, if any, and
    `labels_missing` whether people still owe labels for it, such that a run would only say
    it waits (the caller reads the hand-off: baldflow.labeling). Raises ConfigError, as a run
    would, when the parameters differ from the campaign's own. The caller holds the workspace
    lock, so no run changes the workspace meanwhile.
    """
    ws = Workspace(workspace)
    name = config.campaign.name
    if not Workspace.is_workspace(ws.root):
        return None
    last = ws.last_round(name)
    waiting = beyond = None
    if last is not None and last >= config.campaign.rounds:
        if batch_round is not None:
            if batch_round <= last:
                return None  # hand-off files of a committed round: the flow's recovery clears them
            beyond = batch_round  # the flow stops before it looks at the batch
    elif batch_round == (0 if last is None else last + 1) and labels_missing:
        waiting = batch_round
    else:
        return None
    if last is not None:
        ws.check_campaign_params(name, config.identity())
    rel = f"{DATA_DIR}/{name}"
    exclude = f":(exclude){rel}/{TO_LABEL_DIR}"
    dirty = ws.git("status", "--porcelain", "--untracked-files=all", "--", rel, exclude)
    if dirty.strip():
        return None  # leftovers of a killed run: the flow's recovery discards them
    try:
        tracker = tracker_for(config.tracking.mlflow_uri, config.tracking.experiment, ws)
    except WorkspaceError:
        return None  # an old marker without an id: the flow gives it one
    rounds = ws.rounds_summary(name)
    committed = {
        row["mlflow_run_id"] for row in rounds if int(row["round"]) > 0 and row.get("mlflow_run_id")
    }
    complete = tracking_complete(
        tracker.tracking_uri, tracker.experiment, tracker.workspace_id, name, committed, last
    )
    if not complete:
        return None
    return Finished(name, last, rounds, tracker.tracking_uri, waiting, beyond)


def tracking_complete(
    tracking_uri: str,
    experiment: str,
    workspace_id: str,
    campaign: str,
    committed: set[str],
    last_round: int | None = None,
) -> bool | None:
    """Whether MLflow holds nothing for Tracker.repair or the campaign's end to do: every
    committed round's run FINISHED with its metrics, no other round run RUNNING, none parked
    (SCHEDULED) for a round up to `last_round`, the campaign run FINISHED. None when it cannot
    tell cheaply (not a SQLite file, another schema).

    Reads MLflow's SQLite file directly, read-only: importing mlflow alone takes longer than
    the whole answer should.
    """
    path = sqlite_store_path(tracking_uri)
    if path is None:
        return None
    if not path.exists():
        return False  # committed rounds but no store: the flow recreates their runs
    query = """
        SELECT r.run_uuid, r.status, k.value
        FROM runs r
        JOIN experiments e ON e.experiment_id = r.experiment_id
        JOIN tags w ON w.run_uuid = r.run_uuid AND w.key = ?
        JOIN tags c ON c.run_uuid = r.run_uuid AND c.key = ?
        JOIN tags k ON k.run_uuid = r.run_uuid AND k.key = ?
        WHERE e.name = ? AND w.value = ? AND c.value = ? AND r.lifecycle_stage = 'active'
    """
    try:
        with read_only_store(path) as db:
            runs = db.execute(
                query, (TAG_WORKSPACE, TAG_CAMPAIGN, TAG_KIND, experiment, workspace_id, campaign)
            ).fetchall()
            ids = [run_id for run_id, _, _ in runs]
            metrics: dict[str, set[str]] = {}
            marks = ",".join("?" * len(ids))
            for run_id, key in db.execute(
                f"SELECT run_uuid, key FROM latest_metrics WHERE run_uuid IN ({marks})", ids
            ):
                metrics.setdefault(run_id, set()).add(key)
            round_of = dict(
                db.execute(
                    f"SELECT run_uuid, value FROM tags WHERE key = ? AND run_uuid IN ({marks})",
                    [TAG_ROUND, *ids],
                )
            )
    except sqlite3.Error:
        return None
    parents = [status for _, status, kind in runs if kind == "campaign"]
    if not parents or any(status != "FINISHED" for status in parents):
        return False
    required = set(REQUIRED_ROUND_METRICS)
    for run_id, status, kind in runs:
        if kind != "round":
            continue
        if run_id in committed:
            if status != "FINISHED" or not required <= metrics.get(run_id, set()):
                return False
        elif status == "RUNNING":
            return False
        elif status == "SCHEDULED" and _at_or_before(round_of.get(run_id), last_round):
            # Parked for labels of a round that is committed since (another clone committed
            # it first): the flow's start retires it.
            return False
    return True


def _at_or_before(tagged: str | None, last_round: int | None) -> bool:
    return last_round is not None and str(tagged or "").isdigit() and int(tagged) <= last_round


def recorded_round_metric(
    tracking_uri: str, experiment: str, workspace_id: str, campaign: str, key: str
) -> dict[int, float] | None:
    """One metric of each round run of a campaign, by round, read from a local SQLite store
    without importing mlflow; None when that is not possible cheaply."""
    path = sqlite_store_path(tracking_uri)
    if path is None:
        return None
    if not path.exists():
        return {}
    query = """
        SELECT n.value, m.value
        FROM runs r
        JOIN experiments e ON e.experiment_id = r.experiment_id
        JOIN tags w ON w.run_uuid = r.run_uuid AND w.key = ?
        JOIN tags c ON c.run_uuid = r.run_uuid AND c.key = ?
        JOIN tags n ON n.run_uuid = r.run_uuid AND n.key = ?
        JOIN latest_metrics m ON m.run_uuid = r.run_uuid AND m.key = ?
        WHERE e.name = ? AND w.value = ? AND c.value = ? AND r.lifecycle_stage = 'active'
    """
    try:
        with read_only_store(path) as db:
            rows = db.execute(
                query,
                (TAG_WORKSPACE, TAG_CAMPAIGN, TAG_ROUND, key, experiment, workspace_id, campaign),
            ).fetchall()
    except sqlite3.Error:
        return None
    return {int(round_index): float(value) for round_index, value in rows}

