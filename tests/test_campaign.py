"""Campaigns end to end with real Prefect, MLflow, git and DVC in temp dirs (no mocks).

One uninterrupted 3-round campaign is shared by the module; the crash tests run the CLI in
real subprocesses and kill them with SIGKILL at exact steps (see baldflow.faults).
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import copy_workspace, run_flow

from baldflow.workspace import Workspace
from baldflow.workspace.ledger import labeled_rows_from_ledger, md5_of_text, read_ledger
from baldflow.workspace.tracking import TAG_CAMPAIGN, TAG_KIND, local_tracking_uri

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(scope="module")
def campaign3(tmp_path_factory, finished_tiny):
    """A copy of the session's finished three-round campaign (the same flow, run once)."""
    source, result, _ = finished_tiny
    return copy_workspace(source, tmp_path_factory.mktemp("campaign3") / "ws"), result


def mlflow_runs(workspace: Path, campaign: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=local_tracking_uri(workspace / "mlflow"))
    experiment = client.get_experiment_by_name("baldflow")
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{TAG_CAMPAIGN}` = '{campaign}'"
    )
    parents = [r for r in runs if r.data.tags[TAG_KIND] == "campaign"]
    rounds = [r for r in runs if r.data.tags[TAG_KIND] == "round"]
    return client, parents, rounds


def test_three_rounds_are_tracked_in_mlflow(campaign3):
    workspace, result = campaign3
    client, parents, rounds = mlflow_runs(workspace, "tiny")
    assert len(parents) == 1 and len(rounds) == 3
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.info.run_id == result["parent_run_id"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "learning_curve.png" in artifacts
    last_round = max(rounds, key=lambda r: int(r.data.tags["baldflow.round"]))
    assert parent.data.metrics["final_test_accuracy"] == pytest.approx(
        last_round.data.metrics["test_accuracy"]
    )
    ws = Workspace(workspace)
    for run in sorted(rounds, key=lambda r: int(r.data.tags["baldflow.round"])):
        tags, metrics = run.data.tags, run.data.metrics
        round_index = int(tags["baldflow.round"])
        assert run.info.status == "FINISHED"
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["git.tag"] == f"tiny/round-{round_index:04d}"
        assert ws.git("rev-parse", tags["git.tag"] + "^{commit}").strip() == tags["git.commit"]
        assert tags["prefect.flow_run_id"] == result["flow_run_id"]
        assert len(tags["dvc.labeled_set_md5"]) == 32
        for key in (
            "test_accuracy",
            "test_nll",
            "train_size",
            "labeled_size",
            "seconds_train",
            "seconds_score",
            "seconds_select",
            "seconds_dvc",
            "seconds_git",
            "seconds_compute",
            "seconds_bookkeeping",
            "seconds_round",
        ):
            assert key in metrics, key
        assert 0.0 <= metrics["test_accuracy"] <= 1.0
        assert metrics["labeled_size"] == 10 + 5 * round_index
        # The training set is logged as an input: DVC's md5 of labeled.csv at the previous tag.
        (dataset_input,) = run.inputs.dataset_inputs
        assert (
            dataset_input.dataset.digest
            == ws.git("show", f"tiny/round-{round_index - 1:04d}:data/tiny/labeled.csv.dvc")
            .split("md5: ")[1]
            .split()[0]
        )
        run_artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"model", "acquired.json"} <= run_artifacts
        model_files = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
        assert model_files == {"model/state_dict.pt", "model/spec.json"}


def test_round_model_can_be_rebuilt_from_mlflow(campaign3, tiny_defaults):
    from baldflow import seeds
    from baldflow.compute import campaign_data, fitting
    from baldflow.config import validate
    from baldflow.models import build_model
    from baldflow.models.weights import load_weights

    workspace, _ = campaign3
    client, _, rounds = mlflow_runs(workspace, "tiny")
    run = rounds[0]
    local = Path(client.download_artifacts(run.info.run_id, "model", str(workspace.parent / "dl")))
    spec = json.loads((local / "spec.json").read_text())
    model = build_model(**spec)
    model.load_state_dict(load_weights(local / "state_dict.pt"))
    # The rebuilt model is the round's model: it scores the test set exactly as the round did.
    config = validate(tiny_defaults)
    seed = seeds.round_seed(config.campaign.seed, int(run.data.tags["baldflow.round"]))
    metrics = fitting.evaluate(config, campaign_data.prepare_data(config), model, seed)
    assert metrics["test_accuracy"] == pytest.approx(run.data.metrics["test_accuracy"])
    assert metrics["test_nll"] == pytest.approx(run.data.metrics["test_nll"])


def test_git_tags_and_dvc_versions_agree_with_the_ledger(campaign3):
    import dvc.api

    workspace, result = campaign3
    ws = Workspace(workspace)
    assert ws.completed_rounds("tiny") == [0, 1, 2, 3]
    assert result["last_round"] == 3
    ledger = read_ledger(ws.ledger_path("tiny"))
    assert [sum(r.round == k for r in ledger) for k in range(4)] == [10, 5, 5, 5]
    assert len({r.sample_id for r in ledger}) == len(ledger)
    for round_index in range(4):
        text = dvc.api.read(
            "data/tiny/labeled.csv", repo=str(workspace), rev=f"tiny/round-{round_index:04d}"
        )
        rebuilt = labeled_rows_from_ledger(ledger, up_to_round=round_index)
        assert [
            (r["sample_id"], int(r["label"]), int(r["round"]))
            for r in csv.DictReader(io.StringIO(text))
        ] == rebuilt
        # The hash each ledger row records is the labeled set DVC versioned at that tag.
        assert {r.labeled_set_md5 for r in ledger if r.round == round_index} == {md5_of_text(text)}
    acquired = [r for r in ledger if r.round > 0]
    assert all(r.strategy == "power-bald" and r.score is not None for r in acquired)
    assert all(
        r.first_pick_probability is not None and r.selection_key is not None for r in acquired
    )
    assert all(r.prefect_flow_run_id == result["flow_run_id"] for r in ledger)
    assert ws.git("status", "--porcelain").strip() == ""


def test_prefect_publishes_a_table_artifact_per_round(campaign3, prefect_harness):
    import httpx

    workspace, result = campaign3
    ledger = read_ledger(Workspace(workspace).ledger_path("tiny"))
    keys = [f"tiny-round-{k:04d}" for k in (1, 2, 3)]
    # Straight to the REST API: the 3.8 sync client sends nulls the server rejects. Other
    # tests of the session publish these keys too (their campaigns are named tiny as well):
    # this campaign's flow run names its own.
    response = httpx.post(
        f"{prefect_harness}/artifacts/filter",
        json={
            "artifacts": {"key": {"any_": keys}},
            "flow_runs": {"id": {"any_": [result["flow_run_id"]]}},
            "sort": "KEY_ASC",
            "limit": 10,
            "offset": 0,
        },
    )
    response.raise_for_status()
    found = {a["key"]: a for a in response.json()}
    assert sorted(found) == keys
    for round_index, key in zip((1, 2, 3), keys, strict=True):
        artifact = found[key]
        assert artifact["type"] == "table"
        data = artifact["data"]
        table = json.loads(data) if isinstance(data, str) else data
        expected = [r for r in ledger if r.round == round_index]
        assert [row["sample_id"] for row in table] == [r.sample_id for r in expected]
        assert [row["score"] for row in table] == [r.score for r in expected]


def test_history_and_status_match_the_ledger(campaign3, capsys):
    from baldflow.cli import main

    workspace, _ = campaign3
    ledger_path = Workspace(workspace).ledger_path("tiny")
    assert main(["history", "--workspace", str(workspace), "--format", "csv"]) == 0
    assert capsys.readouterr().out == ledger_path.read_text()
    assert main(["history", "-w", str(workspace), "--round", "2", "--format", "json"]) == 0
    records = json.loads(capsys.readouterr().out)
    expected = [r for r in read_ledger(ledger_path) if r.round == 2]
    assert [r["sample_id"] for r in records] == [r.sample_id for r in expected]
    assert records[0]["score"] == expected[0].score
    sample = expected[0].sample_id
    assert main(["history", "-w", str(workspace), "--sample", sample, "--format", "json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["round"] == 2 and record["mlflow_run_id"] == expected[0].mlflow_run_id
    assert main(["history", "-w", str(workspace), "--campaign", "tiny"]) == 0
    assert sample in capsys.readouterr().out
    assert main(["status", "-w", str(workspace), "--format", "json"]) == 0
    (status,) = json.loads(capsys.readouterr().out)
    assert status["campaign"] == "tiny" and status["rounds_done"] == 3
    assert status["labeled"] == 25 and status["latest_tag"] == "tiny/round-0003"
    assert 0.0 < status["latest_test_accuracy"] <= 1.0


def test_short_pool_takes_what_is_left_and_an_empty_pool_ends_cleanly(tmp_path, tiny_params):
    from baldflow.compute import campaign_data
    from baldflow.config import validate

    tiny_params["data"]["options"]["pool_size"] = 40
    tiny_params["campaign"].update(rounds=6, name="short")
    data = campaign_data.prepare_data(validate(tiny_params))
    remaining = len(data.splits.pool_ids) - len(data.initial_ids)
    batch = remaining * 2 // 3
    tiny_params["acquisition"]["batch_size"] = batch
    result = run_flow(tmp_path / "ws", tiny_params)
    assert result["stopped"] == "pool-empty"
    assert result["last_round"] == 2
    ledger = read_ledger(Workspace(tmp_path / "ws").ledger_path("short"))
    assert sum(r.round == 1 for r in ledger) == batch
    assert sum(r.round == 2 for r in ledger) == remaining - batch
    assert len(ledger) == len(data.splits.pool_ids)


# ------------------------------------------------------------------ subprocess runs
def cli_env(prefect_api_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    # The session's Prefect test server: also exercises flows against a configured server.
    env["PREFECT_API_URL"] = prefect_api_url
    env.update(extra)
    return env


def start_cli(workspace: Path, params_file: Path, env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "baldflow.cli",
            "run",
            "--workspace",
            str(workspace),
            "--config",
            str(params_file),
            *args,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"process ended early:\n{proc.stdout.read()}")
        assert time.monotonic() < deadline, "pause point never reached"
        time.sleep(0.1)


def flow_run_states(prefect_api_url: str, workspace: Path) -> list[str]:
    import httpx

    response = httpx.post(
        f"{prefect_api_url}/flow_runs/filter",
        json={"flows": {"name": {"any_": ["baldflow-campaign"]}}, "limit": 200, "offset": 0},
    )
    response.raise_for_status()
    return [
        run["state_type"]
        for run in response.json()
        if Path(run["parameters"].get("workspace", "")).resolve() == workspace.resolve()
    ]


def kill_at(workspace, params_file, prefect_harness, tmp_path, point: str) -> None:
    marker = tmp_path / f"paused-{point.replace(':', '-')}"
    env = cli_env(prefect_harness, BALDFLOW_FAULT=f"{point}:pause", BALDFLOW_FAULT_FILE=str(marker))
    proc = start_cli(workspace, params_file, env)
    try:
        wait_for(marker, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_mid_round_then_resume_loses_and_duplicates_nothing(
    tmp_path, tiny_params, prefect_harness, campaign3
):
    workspace = tmp_path / "ws"
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_params))
    # Killed after the new labeled set was added to DVC but before the git commit of round 2.
    kill_at(workspace, params_file, prefect_harness, tmp_path, "version:dvc-added:2")
    ws = Workspace(workspace)
    assert ws.completed_rounds("tiny") == [0, 1]
    # Killed again, this time between the commit of round 2 and its tag.
    kill_at(workspace, params_file, prefect_harness, tmp_path, "version:committed:2")
    assert ws.completed_rounds("tiny") == [0, 1]

    proc = start_cli(workspace, params_file, cli_env(prefect_harness))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "repaired an interrupted round" in out

    assert ws.completed_rounds("tiny") == [0, 1, 2, 3]
    ledger = read_ledger(ws.ledger_path("tiny"))
    ids = [r.sample_id for r in ledger]
    assert len(ids) == len(set(ids)) == 25
    assert [r.round for r in ledger] == sorted(r.round for r in ledger)
    for round_index in range(4):
        assert ws.labeled_at("tiny", round_index) == labeled_rows_from_ledger(
            ledger, up_to_round=round_index
        )
    # Same parameters and seed, interrupted or not: the same acquisitions (CPU).
    reference = read_ledger(Workspace(campaign3[0]).ledger_path("tiny"))
    assert [(r.round, r.sample_id, r.label) for r in ledger] == [
        (r.round, r.sample_id, r.label) for r in reference
    ]
    _, parents, rounds = mlflow_runs(workspace, "tiny")
    assert len(parents) == 1
    finished = [r for r in rounds if r.info.status == "FINISHED"]
    assert sorted(int(r.data.tags["baldflow.round"]) for r in finished) == [1, 2, 3]
    assert all(r.info.status in ("FINISHED", "KILLED") for r in rounds)
    # Prefect: the two killed flow runs were marked Crashed by the resume, none looks alive.
    states = flow_run_states(prefect_harness, workspace)
    assert sorted(states) == ["COMPLETED", "CRASHED", "CRASHED"]

    # A clean stop then more rounds: the campaign continues at round 4, in order.
    result = run_flow(
        workspace, {**tiny_params, "campaign": {**tiny_params["campaign"], "rounds": 4}}
    )
    assert result["last_round"] == 4
    longer = read_ledger(ws.ledger_path("tiny"))
    assert longer[: len(ledger)] == ledger
    assert {r.round for r in longer[len(ledger) :]} == {4}
    assert len({r.sample_id for r in longer}) == len(longer) == 30
    # Asking for rounds that are already done does nothing.
    again = run_flow(
        workspace, {**tiny_params, "campaign": {**tiny_params["campaign"], "rounds": 4}}
    )
    assert again["last_round"] == 4
    assert read_ledger(ws.ledger_path("tiny")) == longer


def test_a_second_writer_fails_fast_and_leaves_the_first_unharmed(
    tmp_path, tiny_params, prefect_harness
):
    workspace = tmp_path / "ws"
    # Round 0 is enough to hold the lock in the middle of writing a round.
    tiny_params["campaign"]["rounds"] = 0
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_params))
    marker = tmp_path / "paused"
    env = cli_env(
        prefect_harness,
        BALDFLOW_FAULT="version:labels-written:0:pause",
        BALDFLOW_FAULT_FILE=str(marker),
    )
    first = start_cli(workspace, params_file, env)
    try:
        wait_for(marker, first)
        started = time.monotonic()
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "baldflow.cli",
                "run",
                "--workspace",
                str(workspace),
                "--config",
                str(params_file),
            ],
            env=cli_env(prefect_harness),
            capture_output=True,
            text=True,
            timeout=120,
        )
        elapsed = time.monotonic() - started
        assert second.returncode == 3, second.stdout + second.stderr
        assert "WorkspaceLockedError" in second.stderr
        assert f"pid {first.pid}" in second.stderr
        assert elapsed < 30
        assert first.poll() is None
        marker.with_name(marker.name + ".release").write_text("")
        out, _ = first.communicate(timeout=300)
        assert first.returncode == 0, out
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    ws = Workspace(workspace)
    assert ws.completed_rounds("tiny") == [0]
    assert len(read_ledger(ws.ledger_path("tiny"))) == 10
    assert ws.git("status", "--porcelain").strip() == ""


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_a_failing_round_leaves_the_last_completed_round(tmp_path, tiny_params):
    tiny_params["campaign"]["rounds"] = 1
    tiny_params["training"]["device"] = "cuda"  # valid, but fails when training starts here
    # Without CUDA, torch says there is no NVIDIA driver (or that it was built without CUDA).
    with pytest.raises((RuntimeError, AssertionError), match="(?i)nvidia|cuda"):
        run_flow(tmp_path / "ws", tiny_params)
    ws = Workspace(tmp_path / "ws")
    assert ws.completed_rounds("tiny") == [0]
    _, parents, rounds = mlflow_runs(tmp_path / "ws", "tiny")
    assert [r.info.status for r in parents] == ["FAILED"]
    assert [r.info.status for r in rounds] == ["FAILED"]
    failed_run = rounds[0].info.run_id
    # The device may change on resume; the round runs again and the campaign completes.
    tiny_params["training"]["device"] = "cpu"
    result = run_flow(tmp_path / "ws", tiny_params)
    assert result["last_round"] == 1
    assert len(read_ledger(ws.ledger_path("tiny"))) == 15
    _, parents, rounds = mlflow_runs(tmp_path / "ws", "tiny")
    assert [r.info.status for r in parents] == ["FINISHED"]
    # The round has one run, however often it was started: the failed attempt's, finished.
    assert [(r.info.run_id, r.info.status) for r in rounds] == [(failed_run, "FINISHED")]


def test_resume_with_other_parameters_is_refused(tmp_path, tiny_params):
    from baldflow.config import ConfigError

    tiny_params["campaign"]["rounds"] = 0
    run_flow(tmp_path / "ws", tiny_params)
    tiny_params["acquisition"]["strategy"] = "random"
    with pytest.raises(ConfigError, match="acquisition.strategy: was 'power-bald', now 'random'"):
        run_flow(tmp_path / "ws", tiny_params)


def _deleted_parents(client, campaign: str) -> list:
    from mlflow.entities import ViewType

    experiment = client.get_experiment_by_name("baldflow")
    return client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{TAG_CAMPAIGN}` = '{campaign}' and tags.`{TAG_KIND}` = 'campaign'",
        run_view_type=ViewType.DELETED_ONLY,
    )


def test_a_run_that_fails_before_round_0_leaves_no_parent_run(tmp_path, tiny_params, monkeypatch):
    """A parent run no committed round names is retired when its run fails, not left FAILED
    beside the parent the campaign gets once round 0 is committed."""
    from baldflow import faults
    from baldflow.faults import FAULT_ENV, InjectedFault
    from baldflow.workspace.tracking import TAG_DISCARDED

    tiny_params["campaign"]["rounds"] = 0
    monkeypatch.setenv(FAULT_ENV, "label:after:0:fail")
    with pytest.raises(InjectedFault):
        run_flow(tmp_path / "ws", tiny_params)
    client, parents, _ = mlflow_runs(tmp_path / "ws", "tiny")
    assert parents == [], [(r.info.run_id, r.info.status) for r in parents]
    (retired,) = _deleted_parents(client, "tiny")
    assert retired.info.status == "KILLED"
    assert "InjectedFault" in retired.data.tags[TAG_DISCARDED]
    monkeypatch.delenv(FAULT_ENV)
    faults._raised.clear()
    result = run_flow(tmp_path / "ws", tiny_params)
    _, parents, _ = mlflow_runs(tmp_path / "ws", "tiny")
    assert [(r.info.run_id, r.info.status) for r in parents] == [
        (result["parent_run_id"], "FINISHED")
    ]


def test_the_next_run_retires_a_failed_parent_a_race_left(tmp_path, tiny_params):
    """A clone that lost the race for a shared object before its round 0 left a FAILED parent
    run beside the campaign's (what releases before the fix did); the next run retires it."""
    from baldflow.workspace.tracking import TAG_CLONE, TAG_DISCARDED, TAG_WORKSPACE

    tiny_params["campaign"]["rounds"] = 0
    first = run_flow(tmp_path / "ws", tiny_params)
    client, (parent,), _ = mlflow_runs(tmp_path / "ws", "tiny")
    stray = client.create_run(
        parent.info.experiment_id,
        run_name="tiny",
        tags={
            TAG_WORKSPACE: parent.data.tags[TAG_WORKSPACE],
            TAG_CAMPAIGN: "tiny",
            TAG_KIND: "campaign",
            TAG_CLONE: "another-clone",
        },
    ).info.run_id
    client.set_terminated(stray, status="FAILED")
    tiny_params["campaign"]["rounds"] = 1
    second = run_flow(tmp_path / "ws", tiny_params)
    assert second["parent_run_id"] == first["parent_run_id"]
    _, parents, _ = mlflow_runs(tmp_path / "ws", "tiny")
    assert [(r.info.run_id, r.info.status) for r in parents] == [
        (first["parent_run_id"], "FINISHED")
    ]
    (retired,) = _deleted_parents(client, "tiny")
    assert retired.info.run_id == stray
    assert first["parent_run_id"] in retired.data.tags[TAG_DISCARDED]
