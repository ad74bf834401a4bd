"""Each round's model in the MLflow Model Registry, with real Prefect, MLflow, git and DVC.

One 3-round campaign is shared by the module; a second one loses a registration (the round's
tracking fails after its commit) and gets it back at the next start.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import copy_workspace, run_flow

from baldflow.workspace import Workspace
from baldflow.workspace.ledger import read_ledger
from baldflow.workspace.registry import (
    ALIAS_LATEST,
    TAG_REGISTER,
    registered_model_name,
    round_alias,
)
from baldflow.workspace.tracking import TAG_CAMPAIGN, TAG_KIND, local_tracking_uri

pytestmark = pytest.mark.usefixtures("prefect_harness")

NAME = registered_model_name("tiny")
# The same code on the same CPU: only float reassociation across batch sizes may differ.
RTOL, ATOL = 1e-6, 1e-9


@pytest.fixture(scope="module")
def campaign3(tmp_path_factory, finished_tiny):
    """A copy of the session's finished three-round campaign (the same flow, run once)."""
    source, result, seconds = finished_tiny
    return copy_workspace(source, tmp_path_factory.mktemp("registry") / "ws"), result, seconds


def client_of(workspace: Path):
    from mlflow.tracking import MlflowClient

    uri = local_tracking_uri(workspace / "mlflow")
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextlib.contextmanager
def mlflow_uri(uri: str):
    """mlflow.pyfunc.load_model resolves `models:/` through the process-wide URIs; unset after
    (set to anything, they would redirect every later client's registry calls). The variables
    MLflow exports alongside are put back by conftest."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


def versions(client, name: str = NAME) -> dict[int, object]:
    """The versions of a registered model by the round they hold."""
    found = client.search_model_versions(f"name = '{name}'")
    by_round = {int(v.tags["baldflow.round"]): v for v in found}
    assert len(by_round) == len(found), "two versions of one round"
    return by_round


def round_runs(client, campaign: str = "tiny") -> dict[int, object]:
    experiment = client.get_experiment_by_name("baldflow")
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{TAG_CAMPAIGN}` = '{campaign}' and tags.`{TAG_KIND}` = 'round'",
    )
    return {int(r.data.tags["baldflow.round"]): r for r in runs}


def dvc_md5(workspace: Path, tag: str, campaign: str = "tiny") -> str:
    text = Workspace(workspace).git("show", f"{tag}:data/{campaign}/labeled.csv.dvc")
    return text.split("md5: ")[1].split()[0]


def pool_rows(params: dict, sample_ids: list[str]):
    """The pool's features of `sample_ids`, flattened as the registered model takes them."""
    from baldflow.compute import campaign_data
    from baldflow.config import validate

    data = campaign_data.prepare_data(validate(params))
    x = data.splits.pool_x[data.rows(sample_ids)]
    return x.reshape(len(sample_ids), -1).numpy().astype(np.float32)


def round_reference(client, run, x_flat: np.ndarray):
    """What baldflow itself computes with the round's model, rebuilt from the run's files, and
    the K masks of the round's scoring pass: (probs_N_C, bald_N)."""
    from baldflow import seeds
    from baldflow.acquisition.scores import bald
    from baldflow.inference import predict_log_probs
    from baldflow.models import build_model
    from baldflow.models.weights import load_weights

    local = Path(client.download_artifacts(run.info.run_id, "model"))
    spec = json.loads((local / "spec.json").read_text())
    model = build_model(**spec)
    model.load_state_dict(load_weights(local / "state_dict.pt"))
    x = torch.from_numpy(x_flat).reshape(len(x_flat), *spec["input_shape"])
    generator = seeds.generator_for(int(run.data.params["seed"]), seeds.STREAM_SCORE)
    log_probs = predict_log_probs(
        model, x, int(run.data.params["acquisition.mc_samples"]), generator
    )
    return log_probs.double().exp().mean(1).numpy(), bald(log_probs).numpy()


# ------------------------------------------------------------------ one version per round
def test_each_committed_round_has_one_version_tagged_with_git_and_dvc(campaign3):
    workspace, result, _ = campaign3
    client = client_of(workspace)
    by_round = versions(client)
    runs = round_runs(client)
    assert sorted(by_round) == [1, 2, 3] == sorted(runs)
    workspace_id = Workspace(workspace).workspace_id
    for round_index, version in by_round.items():
        tag = f"tiny/round-{round_index:04d}"
        assert version.run_id == runs[round_index].info.run_id
        assert version.tags["git.tag"] == tag
        assert version.tags["git.commit"] == runs[round_index].data.tags["git.commit"]
        assert version.tags["dvc.labeled_set_md5"] == dvc_md5(workspace, tag)
        assert version.tags["baldflow.workspace_id"] == workspace_id
        assert version.tags["baldflow.campaign"] == "tiny"
        aliases = client.get_model_version(NAME, version.version).aliases
        expected = [round_alias(round_index), *([ALIAS_LATEST] if round_index == 3 else [])]
        assert sorted(aliases) == sorted(expected)
        # The registration's cost is on the round's run.
        assert 0 < runs[round_index].data.metrics["seconds_register"] < 30
    latest = client.get_model_version_by_alias(NAME, ALIAS_LATEST)
    assert latest.tags["baldflow.round"] == "3"
    parent = client.get_run(result["parent_run_id"])
    assert parent.data.tags[TAG_REGISTER] == "true"


def test_the_version_links_to_a_logged_model_of_the_round_run(campaign3):
    workspace, _, _ = campaign3
    client = client_of(workspace)
    runs = round_runs(client)
    for round_index, version in versions(client).items():
        run = client.get_run(runs[round_index].info.run_id)
        linked = [output.model_id for output in run.outputs.model_outputs]
        assert len(linked) == 1
        logged = client.get_logged_model(linked[0])
        assert logged.source_run_id == run.info.run_id
        assert str(logged.status) in ("READY", "LoggedModelStatus.READY")
        assert version.source == logged.artifact_location
    # The run's own model files are as they were (state_dict + spec only).
    files = {a.path for a in client.list_artifacts(runs[1].info.run_id, "model")}
    assert files == {"model/state_dict.pt", "model/spec.json"}


# ------------------------------------------------------------------ predictions
def test_latest_version_predicts_what_baldflow_computes_with_the_round_masks(
    campaign3, tiny_defaults
):
    import mlflow.pyfunc

    workspace, _, _ = campaign3
    client = client_of(workspace)
    run = round_runs(client)[3]
    ledger = read_ledger(Workspace(workspace).ledger_path("tiny"))
    acquired = [r for r in ledger if r.round == 3]
    # The batch round 3 acquired, plus pool samples it did not (labeled before, or never).
    others = [r.sample_id for r in ledger if r.round == 1][:3]
    sample_ids = [r.sample_id for r in acquired] + others
    x = pool_rows(tiny_defaults, sample_ids)

    with mlflow_uri(local_tracking_uri(workspace / "mlflow")):
        model = mlflow.pyfunc.load_model(f"models:/{NAME}@{ALIAS_LATEST}")
    predicted = model.predict(x)
    probs, bald_scores = round_reference(client, run, x)

    columns = [f"prob_{c}" for c in range(10)]
    assert list(predicted.columns) == [*columns, "bald"]
    np.testing.assert_allclose(predicted[columns].to_numpy(), probs, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(predicted["bald"].to_numpy(), bald_scores, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(predicted[columns].sum(axis=1), 1.0, rtol=1e-6)
    # The round's own record: power-bald logged each acquired sample's BALD score as the round
    # computed it while scoring the whole pool.
    np.testing.assert_allclose(
        predicted["bald"].to_numpy()[: len(acquired)],
        [r.score for r in acquired],
        rtol=RTOL,
        atol=ATOL,
    )
    # Deterministic: again, in another order and one row at a time, the same numbers.
    again = model.predict(x[::-1].copy())
    np.testing.assert_array_equal(again.to_numpy()[::-1], predicted.to_numpy())
    # One row alone goes through other float32 kernels than a batch; BALD, a difference of two
    # entropies near log 10, keeps that rounding (~1e-7) as an absolute error.
    single = model.predict(x[:1])
    np.testing.assert_allclose(single.to_numpy(), predicted.to_numpy()[:1], rtol=RTOL, atol=1e-6)


def test_each_round_alias_serves_that_rounds_model(campaign3, tiny_defaults):
    import mlflow.pyfunc

    workspace, _, _ = campaign3
    client = client_of(workspace)
    runs = round_runs(client)
    x = pool_rows(
        tiny_defaults,
        [r.sample_id for r in read_ledger(Workspace(workspace).ledger_path("tiny"))][:4],
    )
    with mlflow_uri(local_tracking_uri(workspace / "mlflow")):
        model = mlflow.pyfunc.load_model(f"models:/{NAME}@{round_alias(1)}")
    probs, _ = round_reference(client, runs[1], x)
    predicted = model.predict(x)
    np.testing.assert_allclose(
        predicted[[f"prob_{c}" for c in range(10)]].to_numpy(), probs, rtol=RTOL, atol=ATOL
    )


def test_signature_input_example_and_requirements_are_recorded(campaign3):
    import mlflow.models
    from mlflow.models import Model

    workspace, _, _ = campaign3
    uri = f"models:/{NAME}@{ALIAS_LATEST}"
    with mlflow_uri(local_tracking_uri(workspace / "mlflow")):
        info = mlflow.models.get_model_info(uri)
        local = Path(mlflow.artifacts.download_artifacts(uri))
    inputs = info.signature.inputs.to_dict()
    assert inputs == [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": (-1, 64)}}]
    assert [c["name"] for c in info.signature.outputs.to_dict()] == [
        *(f"prob_{c}" for c in range(10)),
        "bald",
    ]
    example = Model.load(local).load_input_example(str(local))
    assert example.shape == (2, 64) and example.dtype == np.float32
    requirements = (local / "requirements.txt").read_text().split()
    assert any(r.startswith("baldflow==") for r in requirements)
    assert any(r.startswith("torch==") for r in requirements)


def test_a_wrongly_shaped_input_names_the_shape_it_needs(campaign3):
    from baldflow.serving import RoundModelInputError, as_inputs

    with pytest.raises(RoundModelInputError, match=r"\[N, 64\] flattened features"):
        as_inputs(np.zeros((2, 63), np.float32), (1, 8, 8))


def test_mlflow_models_predict_on_the_command_line_gives_the_same_probabilities(
    campaign3, tiny_defaults, tmp_path
):
    workspace, _, _ = campaign3
    client = client_of(workspace)
    ids = [r.sample_id for r in read_ledger(Workspace(workspace).ledger_path("tiny"))][-4:]
    x = pool_rows(tiny_defaults, ids)
    (tmp_path / "input.json").write_text(json.dumps({"inputs": x.tolist()}))
    env = {**os.environ, "MLFLOW_TRACKING_URI": local_tracking_uri(workspace / "mlflow")}
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "predict",
            "-m",
            f"models:/{NAME}@{ALIAS_LATEST}",
            "-i",
            str(tmp_path / "input.json"),
            "-t",
            "json",
            "-o",
            str(tmp_path / "output.json"),
            "--env-manager",
            "local",
        ],  # fmt: skip
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert time.perf_counter() - started < 60
    rows = json.loads((tmp_path / "output.json").read_text())["predictions"]
    probs, bald_scores = round_reference(client, round_runs(client)[3], x)
    got = np.array([[row[f"prob_{c}"] for c in range(10)] for row in rows])
    np.testing.assert_allclose(got, probs, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose([row["bald"] for row in rows], bald_scores, rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------ idempotency
def test_registering_a_round_again_finds_its_version(campaign3, tmp_path):
    from baldflow.models.weights import load_weights
    from baldflow.rounds import committed_tracking
    from baldflow.workspace.registry import register_round_state, repair_registrations
    from baldflow.workspace.tracking import tracker_for

    workspace, _, _ = campaign3
    ws = Workspace(workspace)
    tracker = tracker_for(None, "baldflow", ws)
    client = client_of(workspace)
    run = round_runs(client)[2]
    local = Path(client.download_artifacts(run.info.run_id, "model", str(tmp_path)))
    before = versions(client)
    # What track_round does on a retry: the version is found by the run, nothing is added.
    again = register_round_state(
        tracker,
        campaign="tiny",
        round_index=2,
        run_id=run.info.run_id,
        tags={"git.tag": "tiny/round-0002"},
        model_state=load_weights(local / "state_dict.pt"),
        model_spec=json.loads((local / "spec.json").read_text()),
    )
    assert not again.created and again.version == str(before[2].version)
    # Re-registering an older round leaves the newest round's alias where it was.
    assert client.get_model_version_by_alias(NAME, ALIAS_LATEST).tags["baldflow.round"] == "3"
    repaired = repair_registrations(tracker, "tiny", committed_tracking(ws, "tiny"))
    assert repaired.registered == [] and repaired.without_model == []
    assert {r: v.version for r, v in versions(client).items()} == {
        r: v.version for r, v in before.items()
    }


def test_running_the_finished_campaign_again_adds_no_version(campaign3, tiny_defaults):
    workspace, _, _ = campaign3
    client = client_of(workspace)
    before = {r: v.version for r, v in versions(client).items()}
    result = run_flow(workspace, tiny_defaults)
    assert result["last_round"] == 3
    assert {r: v.version for r, v in versions(client).items()} == before
    assert (
        len(client.search_logged_models([client.get_experiment_by_name("baldflow").experiment_id]))
        == 3
    )


# ------------------------------------------------------------------ switch and repair
def test_switched_off_then_a_lost_registration_is_repaired_at_the_next_start(
    tmp_path, tiny_params, monkeypatch
):
    workspace = tmp_path / "ws"
    params = tiny_params
    params["campaign"].update(name="lost", rounds=1)
    params["tracking"] = {"register_model": False}
    run_flow(workspace, params)
    client = client_of(workspace)
    name = registered_model_name("lost")
    assert client.search_registered_models(f"name = '{name}'") == []
    parent = client.search_runs(
        [client.get_experiment_by_name("baldflow").experiment_id],
        filter_string=f"tags.`{TAG_CAMPAIGN}` = 'lost' and tags.`{TAG_KIND}` = 'campaign'",
    )[0]
    assert parent.data.tags[TAG_REGISTER] == "false"

    # Switched on: the start registers round 1. Round 2 commits, then its tracking fails after
    # its model files are logged and before it is registered, on every retry.
    params["tracking"] = {"register_model": True}
    params["campaign"]["rounds"] = 2
    monkeypatch.setenv("BALDFLOW_FAULT", "track:model-logged:2:fail")
    with pytest.raises(Exception, match="fault injected"):
        run_flow(workspace, params)
    monkeypatch.delenv("BALDFLOW_FAULT")
    assert Workspace(workspace).completed_rounds("lost")[-1] == 2
    assert sorted(versions(client, name)) == [1]

    params["campaign"]["rounds"] = 3
    run_flow(workspace, params)
    by_round = versions(client, name)
    assert sorted(by_round) == [1, 2, 3]
    runs = round_runs(client, "lost")
    for round_index, version in by_round.items():
        tag = f"lost/round-{round_index:04d}"
        assert version.run_id == runs[round_index].info.run_id
        assert version.tags["git.tag"] == tag
        assert version.tags["dvc.labeled_set_md5"] == dvc_md5(workspace, tag, "lost")
    assert client.get_model_version_by_alias(name, ALIAS_LATEST).tags["baldflow.round"] == "3"
    assert client.get_model_version_by_alias(name, round_alias(2)).run_id == runs[2].info.run_id


# ------------------------------------------------------------------ the team's server
def test_rounds_register_on_the_team_mlflow_server(tmp_path, tiny_params, team_stack):
    """PostgreSQL registry, artifacts proxied by the server: the client needs no storage."""
    import uuid

    import mlflow.pyfunc
    from mlflow.tracking import MlflowClient

    campaign = f"reg-{uuid.uuid4().hex[:8]}"  # the server is the session's, shared
    tiny_params["campaign"].update(name=campaign, rounds=2)
    tiny_params["tracking"] = {"mlflow_uri": team_stack.mlflow_uri}
    run_flow(tmp_path / "ws", tiny_params)

    uri = team_stack.mlflow_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = registered_model_name(campaign)
    by_round = versions(client, name)
    runs = round_runs(client, campaign)
    assert sorted(by_round) == [1, 2] == sorted(runs)
    for round_index, version in by_round.items():
        tag = f"{campaign}/round-{round_index:04d}"
        assert version.run_id == runs[round_index].info.run_id
        assert version.tags["git.tag"] == tag
        assert version.tags["dvc.labeled_set_md5"] == dvc_md5(tmp_path / "ws", tag, campaign)
    assert client.get_model_version_by_alias(name, ALIAS_LATEST).tags["baldflow.round"] == "2"

    ledger = read_ledger(Workspace(tmp_path / "ws").ledger_path(campaign))
    x = pool_rows(tiny_params, [r.sample_id for r in ledger][:6])
    with mlflow_uri(uri):
        predicted = mlflow.pyfunc.load_model(f"models:/{name}@{ALIAS_LATEST}").predict(x)
    probs, bald_scores = round_reference(client, runs[2], x)
    columns = [f"prob_{c}" for c in range(10)]
    np.testing.assert_allclose(predicted[columns].to_numpy(), probs, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(predicted["bald"].to_numpy(), bald_scores, rtol=RTOL, atol=ATOL)


def test_a_pyfunc_logged_by_an_interrupted_attempt_is_reused(tmp_path):
    """Killed between logging the pyfunc and creating the version: the retry registers the
    pyfunc already there instead of logging a second one."""
    from baldflow.models import build_model
    from baldflow.workspace.registry import log_round_model, register_round_state
    from baldflow.workspace.tracking import TAG_WORKSPACE, Tracker

    tracker = Tracker(local_tracking_uri(tmp_path / "mlflow"), "baldflow", tmp_path / "art", "ws-1")
    run = tracker.client.create_run(tracker.experiment_id, tags={TAG_WORKSPACE: "ws-1"})
    run_id = run.info.run_id
    tracker.client.log_param(run_id, "seed", "11")
    tracker.client.log_param(run_id, "acquisition.mc_samples", "4")
    model = build_model("mlp", (1, 8, 8), 10, 0.5, seed=1)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    torch.save(model.state_dict(), model_dir / "state_dict.pt")
    (model_dir / "spec.json").write_text(json.dumps(model.spec))
    first = log_round_model(tracker, run_id, "solo", 1, model_dir)

    version = register_round_state(
        tracker,
        campaign="solo",
        round_index=1,
        run_id=run_id,
        tags={},
        model_state=model.state_dict(),
        model_spec=model.spec,
    )
    assert version.created
    client = client_of(tmp_path)
    assert [m.model_id for m in client.search_logged_models([tracker.experiment_id])] == [
        first.model_id
    ]
    assert client.get_model_version(version.name, version.version).source == (
        first.artifact_location
    )


def test_repair_reports_rounds_it_cannot_register_and_goes_on(tmp_path):
    """A run without model files, or with files that give no network: noted, not raised (the
    campaign must still start), and the rounds that can be registered are."""
    from baldflow.models import build_model
    from baldflow.workspace.registry import repair_registrations
    from baldflow.workspace.tracking import TAG_WORKSPACE, Tracker

    tracker = Tracker(local_tracking_uri(tmp_path / "mlflow"), "baldflow", tmp_path / "art", "ws-1")
    model = build_model("mlp", (1, 8, 8), 10, 0.5, seed=1)
    committed = {}
    for round_index, spec in ((1, None), (2, {"hidden": 3}), (3, model.spec)):
        run = tracker.client.create_run(tracker.experiment_id, tags={TAG_WORKSPACE: "ws-1"})
        run_id = run.info.run_id
        tracker.client.log_param(run_id, "seed", "11")
        tracker.client.log_param(run_id, "acquisition.mc_samples", "4")
        if spec is not None:
            files = tmp_path / f"files-{round_index}"
            files.mkdir()
            torch.save(model.state_dict(), files / "state_dict.pt")
            (files / "spec.json").write_text(json.dumps(spec))
            tracker.client.log_artifacts(run_id, str(files), artifact_path="model")
        committed[round_index] = {"run_id": run_id, "tags": {"git.tag": f"c/round-{round_index}"}}

    done = repair_registrations(tracker, "c", committed)
    assert done.registered == [3]
    assert done.without_model == [1]
    assert list(done.failed) == [2] and "cannot rebuild the round's network" in done.failed[2]
    assert sorted(versions(client_of(tmp_path), registered_model_name("c"))) == [3]


def test_a_later_round_is_registered_without_running_its_network(tmp_path):
    """Registering runs none of the network's passes (the signature comes from the spec; the
    input example is checked against it, not predicted on) and, once the registered model
    exists, tries no second creation of it; the version still serves the round's numbers."""
    import mlflow.pyfunc
    import sqlalchemy
    from mlflow.models import Model

    from baldflow.models import build_model
    from baldflow.serving import as_inputs, mc_predict, prediction_frame
    from baldflow.workspace.registry import register_round_state
    from baldflow.workspace.tracking import TAG_WORKSPACE, Tracker

    uri = local_tracking_uri(tmp_path / "mlflow")
    tracker = Tracker(uri, "baldflow", tmp_path / "art", "ws-1")
    models = {r: build_model("mlp", (1, 8, 8), 10, 0.5, seed=r) for r in (1, 2)}

    def register(round_index: int):
        run = tracker.client.create_run(tracker.experiment_id, tags={TAG_WORKSPACE: "ws-1"})
        tracker.client.log_param(run.info.run_id, "seed", str(10 + round_index))
        tracker.client.log_param(run.info.run_id, "acquisition.mc_samples", "4")
        return register_round_state(
            tracker,
            campaign="solo",
            round_index=round_index,
            run_id=run.info.run_id,
            tags={"git.tag": f"solo/round-{round_index:04d}"},
            model_state=models[round_index].state_dict(),
            model_spec=models[round_index].spec,
        )

    register(1)
    forwards, statements = [], []
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, out: forwards.append(type(module).__name__)
    )

    def seen(conn, cursor, statement, *args):
        statements.append(statement)

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", seen)
    try:
        second = register(2)
    finally:
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "before_cursor_execute", seen)
        hook.remove()
    assert second.created and forwards == []
    assert statements and not [s for s in statements if "INSERT INTO registered_models" in s]

    name = registered_model_name("solo")
    x = np.random.default_rng(0).random((5, 64), dtype=np.float32)
    with mlflow_uri(uri):
        served = mlflow.pyfunc.load_model(f"models:/{name}@{ALIAS_LATEST}").predict(x)
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}@{ALIAS_LATEST}"))
    expected = prediction_frame(
        *mc_predict(models[2].eval(), as_inputs(x, (1, 8, 8)), seed=12, mc_samples=4)
    )
    np.testing.assert_allclose(served.to_numpy(), expected.to_numpy(), rtol=RTOL, atol=ATOL)
    info = Model.load(local)
    assert [c["name"] for c in info.signature.outputs.to_dict()][-1] == "bald"
    assert info.load_input_example(str(local)).shape == (2, 64)
    assert any(r.startswith("torch==") for r in (local / "requirements.txt").read_text().split())
    assert info.run_id == client_of(tmp_path).get_model_version(name, second.version).run_id


def test_a_version_registered_before_the_pyfunc_moved_to_serving_still_loads(tmp_path):
    """Versions registered before baldflow.serving held the pyfunc keep a round_model.py that
    imports RoundModel from baldflow.workspace.registry: they load, and predict what a version
    registered now predicts."""
    import mlflow.pyfunc

    from baldflow import serving
    from baldflow.models import build_model
    from baldflow.workspace import registry
    from baldflow.workspace.tracking import TAG_WORKSPACE, Tracker

    uri = local_tracking_uri(tmp_path / "mlflow")
    tracker = Tracker(uri, "baldflow", tmp_path / "art", "ws-1")
    run = tracker.client.create_run(tracker.experiment_id, tags={TAG_WORKSPACE: "ws-1"})
    tracker.client.log_param(run.info.run_id, "seed", "11")
    tracker.client.log_param(run.info.run_id, "acquisition.mc_samples", "4")
    model = build_model("mlp", (1, 8, 8), 10, 0.5, seed=1)
    registry.register_round_state(
        tracker,
        campaign="solo",
        round_index=1,
        run_id=run.info.run_id,
        tags={},
        model_state=model.state_dict(),
        model_spec=model.spec,
    )
    name = registered_model_name("solo")
    with mlflow_uri(uri):
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}@{ALIAS_LATEST}"))
    code = local / registry.CODE_FILE
    assert "from baldflow.serving import RoundModel" in code.read_text()
    x = np.random.default_rng(0).random((5, 64), dtype=np.float32)
    served = mlflow.pyfunc.load_model(str(local)).predict(x)

    # The code file of a version registered before the move.
    code.write_text(code.read_text().replace("baldflow.serving", "baldflow.workspace.registry"))
    older = mlflow.pyfunc.load_model(str(local))
    assert type(older.unwrap_python_model()) is serving.RoundModel
    np.testing.assert_array_equal(older.predict(x).to_numpy(), served.to_numpy())
    assert registry.RoundModel is serving.RoundModel
