"""The round as typed, idempotent tasks: retries that do not duplicate, MLflow repaired from git,
hand-off leftovers removed, runs scoped by workspace id, and the package layout.

Real Prefect, MLflow (SQLite), git and DVC in temp dirs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import run_flow

from baldflow.rounds import Labels, RoundRecord
from baldflow.workspace import Workspace, WorkspaceError
from baldflow.workspace.tracking import TAG_WORKSPACE, Tracker, local_tracking_uri

REPO = Path(__file__).resolve().parents[1]


def round_runs(tracking_uri: str, campaign: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("baldflow")
    return list(
        client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`baldflow.campaign` = '{campaign}' and "
            "tags.`baldflow.kind` = 'round'",
        )
    )


# ------------------------------------------------------------------ the typed record
def test_round_record_reads_the_untyped_state_of_earlier_releases():
    old_state = {
        "round": 3,
        "run_id": "abc",
        "seed": 7,
        "train_size": 20,
        "remaining": 80,
        "sample_ids": ["a", "b"],
        "scores": [0.5, 0.25],
        "probabilities": [0.1, 0.2],
        "keys": [1.0, 2.0],
        "evaluation": {"test_accuracy": 0.75, "test_nll": 0.9, "seconds": 1.5},
        "seconds_train": 2.0,
        "seconds_score": 0.5,
        "seconds_select": 0.25,
        "epochs": 4,
        "model_spec": {"name": "mlp"},
    }
    record = RoundRecord.from_state(old_state, campaign="c", strategy="power-bald")
    assert record.test_accuracy == 0.75 and record.seconds_evaluate == 1.5
    assert record.seconds_compute == pytest.approx(2.0 + 1.5 + 0.5 + 0.25)
    assert RoundRecord.from_state(record.to_state(), campaign="x", strategy="y") == record
    rows = record.ledger_rows(Labels([1, 0], ["ann", "bob"]), flow_run_id="f")
    assert [(r.sample_id, r.label, r.rank, r.labeled_by) for r in rows] == [
        ("a", 1, 0, "ann"),
        ("b", 0, 1, "bob"),
    ]
    assert {r.strategy for r in rows} == {"power-bald"} and {r.round for r in rows} == {3}
    with pytest.raises(ValueError, match="1 label"):
        record.ledger_rows(Labels([1], ["ann"]), flow_run_id="f")
    with pytest.raises(ValueError, match="unknown field"):
        RoundRecord.from_state({**old_state, "surprise": 1}, campaign="c", strategy="s")


def test_batch_evidence_counts_as_compute_not_bookkeeping():
    """Assessing the batch computes on the round's model: its seconds (and the shadow check's)
    are in seconds_compute wherever the round reports it: the record, its MLflow metrics and
    its rounds.csv row, so the bookkeeping (wall time less compute) leaves them out."""
    from baldflow.workspace.repo import RoundCommit

    state = {
        "round": 2,
        "run_id": "abc",
        "seed": 7,
        "train_size": 20,
        "remaining": 80,
        "sample_ids": ["a"],
        "scores": [0.5],
        "probabilities": [0.1],
        "keys": [1.0],
        "seconds_train": 2.0,
        "seconds_evaluate": 1.5,
        "seconds_score": 0.5,
        "seconds_select": 0.25,
        "evidence": {"batch_joint_mi": 0.7, "seconds_evidence": 0.125, "seconds_shadow": 0.0625},
    }
    record = RoundRecord.from_state(state, campaign="c", strategy="power-bald")
    compute = 2.0 + 1.5 + 0.5 + 0.25 + 0.125 + 0.0625
    assert record.seconds_evidence == pytest.approx(0.125 + 0.0625)
    assert record.seconds_compute == pytest.approx(compute)
    commit = RoundCommit("c", 2, "0" * 40, "c/round-0002", "md5", 0.0, 0.0)
    metrics = record.metrics(commit, Labels([1], ["ann"]))
    assert metrics["seconds_compute"] == pytest.approx(compute)
    assert metrics["seconds_evidence"] == pytest.approx(0.125)
    assert record.summary()["seconds_compute"] == pytest.approx(compute)
    # A record kept before the evidence was timed reads as before.
    del state["evidence"]
    older = RoundRecord.from_state(state, campaign="c", strategy="power-bald")
    assert older.seconds_evidence == 0.0
    assert older.seconds_compute == pytest.approx(2.0 + 1.5 + 0.5 + 0.25)


# ------------------------------------------------------------------ MLflow, idempotent
@pytest.fixture
def tracker(tmp_path) -> Tracker:
    return Tracker(local_tracking_uri(tmp_path / "mlflow"), "baldflow", tmp_path / "art", "ws-1")


def test_a_retried_round_start_reuses_the_round_run(tracker):
    parent = tracker.campaign_run("c", {"a": 1})
    first = tracker.round_run(parent, "c", 1, {"round": 1})
    tracker.end(first, "FAILED")
    again = tracker.round_run(parent, "c", 1, {"round": 1})
    assert again == first
    assert tracker.client.get_run(first).info.status == "RUNNING"
    assert tracker.round_run(parent, "c", 2, {"round": 2}) != first
    assert len(round_runs(tracker.tracking_uri, "c")) == 2
    # The MLflow UI opens this experiment on its runs, not on an empty GenAI overview.
    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_tracking_a_round_twice_logs_its_batch_once(tracker, tmp_path):
    parent = tracker.campaign_run("c", {})
    run_id = tracker.round_run(parent, "c", 1, {})
    acquired = [{"rank": i, "sample_id": f"s{i}", "label": i % 2} for i in range(5)]
    for _ in range(2):
        tracker.log_round(
            run_id,
            round_index=1,
            metrics={"test_accuracy": 0.5},
            tags={"git.tag": "c/round-0001"},
            acquired=acquired,
            model_state=None,
            model_spec=None,
        )
    local = tracker.client.download_artifacts(run_id, "acquired.json", str(tmp_path / "dl"))
    table = json.loads(Path(local).read_text())
    assert [row[1] for row in table["data"]] == [f"s{i}" for i in range(5)]
    logged = json.loads(tracker.client.get_run(run_id).data.tags["mlflow.loggedArtifacts"])
    assert logged == [{"path": "acquired.json", "type": "table"}]


# ------------------------------------------------------------------ repair on start
pytestmark_flow = pytest.mark.usefixtures("prefect_harness")


@pytestmark_flow
def test_a_committed_round_whose_run_was_killed_is_finished_from_git(tmp_path, tiny_params):
    from mlflow.tracking import MlflowClient

    tiny_params["campaign"]["rounds"] = 1
    workspace = tmp_path / "ws"
    run_flow(workspace, tiny_params)
    uri = local_tracking_uri(workspace / "mlflow")
    (run,) = round_runs(uri, "tiny")
    client = MlflowClient(tracking_uri=uri)
    client.set_terminated(run.info.run_id, status="KILLED")
    result = run_flow(workspace, tiny_params)
    assert result["last_round"] == 1 and not result["timings"]
    (after,) = round_runs(uri, "tiny")
    assert after.info.run_id == run.info.run_id
    assert after.info.status == "FINISHED"
    assert after.data.tags["baldflow.tracking"] == "repaired from git"
    assert after.data.tags["git.tag"] == "tiny/round-0001"
    assert after.data.metrics["labeled_size"] == 15


@pytestmark_flow
def test_a_round_that_failed_after_its_commit_gets_its_metrics_on_the_next_start(
    tmp_path, tiny_params, monkeypatch
):
    from baldflow import faults

    tiny_params["campaign"]["rounds"] = 1
    workspace = tmp_path / "ws"
    # Tracking fails after the commit, before any metric is logged, and on every retry.
    monkeypatch.setenv(faults.FAULT_ENV, "track-round:before:1:fail")
    with pytest.raises(faults.InjectedFault):
        run_flow(workspace, tiny_params)
    assert Workspace(workspace).completed_rounds("tiny") == [0, 1]
    uri = local_tracking_uri(workspace / "mlflow")
    (run,) = round_runs(uri, "tiny")
    assert run.info.status == "FAILED" and "test_accuracy" not in run.data.metrics
    monkeypatch.delenv(faults.FAULT_ENV)
    run_flow(workspace, tiny_params)
    (run,) = round_runs(uri, "tiny")
    assert run.info.status == "FINISHED"
    assert 0.0 <= run.data.metrics["test_accuracy"] <= 1.0
    rows = [r.sample_id for r in Workspace(workspace).ledger("tiny") if r.round == 1]
    from mlflow.tracking import MlflowClient

    local = MlflowClient(tracking_uri=uri).download_artifacts(
        run.info.run_id, "acquired.json", str(tmp_path / "dl")
    )
    assert [row[1] for row in json.loads(Path(local).read_text())["data"]] == rows


@pytestmark_flow
def test_hand_off_leftovers_of_a_committed_round_are_removed_on_start(tmp_path, tiny_params):
    from baldflow.config import validate
    from baldflow.labeling import HandOff
    from baldflow.tasks import open_workspace

    tiny_params["campaign"]["rounds"] = 1
    workspace = tmp_path / "ws"
    run_flow(workspace, tiny_params)
    ws = Workspace(workspace)
    handoff = HandOff(ws.campaign_dir("tiny"), "tiny")
    handoff.dir.mkdir(parents=True)
    # What a process killed between the commit of round 1 and clearing its hand-off leaves.
    for path in (handoff.pending_path(1), handoff.labels_path(1), handoff.model_path(1)):
        path.write_text("{}")
    opened = open_workspace.fn(str(workspace), validate(tiny_params))
    assert opened.last_round == 1
    assert any("committed round(s) 1" in note for note in opened.notes)
    assert not list(handoff.dir.glob("round-0001.*"))
    assert ws.git("status", "--porcelain").strip() == ""


# ------------------------------------------------------------------ workspace ids
@pytestmark_flow
def test_two_workspaces_on_one_tracking_server_never_touch_each_others_runs(tmp_path, tiny_params):
    from mlflow.tracking import MlflowClient

    uri = local_tracking_uri(tmp_path / "shared-mlflow")
    tiny_params["campaign"]["rounds"] = 1
    tiny_params["tracking"] = {"mlflow_uri": uri}
    first, second = tmp_path / "one", tmp_path / "two"
    run_flow(first, tiny_params)
    (theirs,) = round_runs(uri, "tiny")
    client = MlflowClient(tracking_uri=uri)
    # As if the first workspace's round were live in another process right now.
    client.update_run(theirs.info.run_id, status="RUNNING")
    result = run_flow(second, tiny_params)
    assert client.get_run(theirs.info.run_id).info.status == "RUNNING"
    ids = {Workspace(first).workspace_id, Workspace(second).workspace_id}
    assert len(ids) == 2
    runs = round_runs(uri, "tiny")
    assert sorted(r.data.tags[TAG_WORKSPACE] for r in runs) == sorted(ids)
    assert (
        result["parent_run_id"]
        != client.get_run(theirs.info.run_id).data.tags["mlflow.parentRunId"]
    )


def test_a_workspace_made_before_ids_gets_one_committed(tmp_path):
    ws = Workspace.init(tmp_path / "ws")
    marker = ws.root / ".baldflow-workspace"
    marker.write_text("baldflow workspace: campaigns live under data/, see README.md\n")
    ws.git("commit", "-qam", "an old marker")
    with pytest.raises(WorkspaceError, match="no workspace-id"):
        ws.workspace_id  # noqa: B018
    assert ws.upgrade_marker() is True
    assert len(ws.workspace_id) == 32
    assert ws.upgrade_marker() is False
    assert ws.git("status", "--porcelain").strip() == ""


# ------------------------------------------------------------------ packaging
def test_flows_and_tasks_install_under_the_baldflow_namespace(tmp_path):
    import shutil

    # Built from a copy: setuptools writes build/ and egg-info beside the sources it builds.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    skip = shutil.ignore_patterns("__pycache__")
    for package in ("baldflow", "flows", "tasks"):
        shutil.copytree(REPO / package, source / package, ignore=skip)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("baldflow-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"baldflow"}
    assert "baldflow/flows/campaign.py" in names and "baldflow/tasks/tracking.py" in names
    # The editable install of this checkout: no top-level `flows` or `tasks` from elsewhere.
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib.util as u, baldflow.flows.campaign, baldflow.tasks;"
            "print(u.find_spec('flows'), u.find_spec('tasks'))",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.split() == ["None", "None"]


# ------------------------------------------------------------------ killed while creating
def test_a_tracking_store_killed_while_being_created_does_not_break_the_next_start(tmp_path):
    store = tmp_path / "mlflow" / "mlflow.db"
    script = (
        "import sys; from pathlib import Path;"
        "from baldflow.workspace.tracking import ensure_sqlite_store;"
        "ensure_sqlite_store(Path(sys.argv[1]))"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(store)])
    try:
        # Kill it while MLflow builds its tables (or, if it was quicker, just after).
        while proc.poll() is None and not list(store.parent.glob("mlflow.db.creating-*")):
            pass
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    tracker = Tracker(local_tracking_uri(store.parent), "baldflow", tmp_path / "art", "ws-1")
    parent = tracker.campaign_run("c", {})
    assert tracker.client.get_run(parent).info.status == "RUNNING"
    assert not list(store.parent.glob("mlflow.db.creating-*"))


def test_a_workspace_killed_inside_git_init_is_completed(tmp_path):
    root = tmp_path / "ws"
    (root / ".git").mkdir(parents=True)  # what a kill inside `git init` can leave
    ws = Workspace.init(root)
    assert Workspace.is_ready(root)
    assert ws.git("log", "--format=%s").strip() == "baldflow: initialise workspace"


@pytestmark_flow
def test_a_workspace_killed_before_its_first_commit_is_completed_on_open(tmp_path, tiny_params):
    from baldflow.config import validate
    from baldflow.tasks import open_workspace

    root = tmp_path / "ws"
    ws = Workspace.init(root)
    # As if killed after the marker was written, before the initial commit.
    ws.git("update-ref", "-d", "HEAD")
    assert Workspace.is_workspace(root) and not Workspace.is_ready(root)
    opened = open_workspace.fn(str(root), validate(tiny_params))
    assert any("completed the interrupted creation" in note for note in opened.notes)
    assert Workspace.is_ready(root)
    assert ws.git("status", "--porcelain").strip() == ""
