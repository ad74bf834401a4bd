"""Errors before work (issue 10): what can be checked is checked before any server starts,
and reported as one line with the `--set` that fixes it; `run --campaign NAME` resumes a
campaign from its recorded parameters."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from baldflow.cli import EXIT_PREFLIGHT, _resolve_config, build_parser, main
from baldflow.config import Config, ConfigError, validate
from baldflow.preflight import PreflightError, check
from baldflow.workspace import LedgerRow, Workspace
from baldflow.workspace.ledger import read_ledger

IDX_STEMS = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


def cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "baldflow.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def refused(config: Config, workspace: Path, error=PreflightError) -> str:
    with pytest.raises(error) as info:
        check(config, workspace)
    text = str(info.value)
    assert "\n" not in text
    return text


def recorded_campaign(root: Path, params: dict, params_yaml: dict | None = None) -> Config:
    """A workspace in which campaign params' campaign.name completed round 0 (no Prefect)."""
    config = validate(params)
    text = yaml.safe_dump(params_yaml if params_yaml is not None else params)
    ws = Workspace.init(root, params_text=text)
    name = config.campaign.name
    rows = [
        LedgerRow(name, 0, sid, 1, "initial", rank, None, None, None, 0, "2026-01-01", "", "", "")
        for rank, sid in enumerate(["3", "7"])
    ]
    ws.commit_round(name, 0, rows, summary={"round": 0}, identity=config.identity())
    ws.close()
    return config


@pytest.fixture
def tiny(tiny_params) -> dict:
    tiny_params["campaign"]["rounds"] = 1
    return tiny_params


# ------------------------------------------------------------------ data sources
def test_mnist_without_root_names_the_set_that_fixes_it(tmp_path):
    text = refused(validate({"data": {"source": "mnist"}}), tmp_path / "ws")
    assert "data.root" in text and "not set" in text
    assert "--set data.root=DIR --set data.options.download=true" in text
    # The option the loader really takes, in the form --set reads it back (not download=True).
    assert "download=True" not in text


def test_mnist_files_are_looked_for_where_the_loader_looks(tmp_path):
    root = tmp_path / "mnist"
    root.mkdir()
    config = validate({"data": {"source": "mnist", "root": str(root)}})
    text = refused(config, tmp_path / "ws")
    assert "MNIST not found" in text and repr(str(root)) in text
    assert f"--set data.root={root} --set data.options.download=true" in text
    # torchvision's layout: root/MNIST/raw/<the four files>.
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in IDX_STEMS:
        (raw / stem).write_bytes(b"")
    check(config, tmp_path / "ws")
    # The four IDX files in root itself, gzipped: all four or a list of what is missing.
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "train-images-idx3-ubyte.gz").write_bytes(b"")
    text = refused(validate({"data": {"source": "mnist", "root": str(flat)}}), tmp_path / "ws")
    assert "t10k-labels-idx1-ubyte[.gz]" in text and "train-images" not in text.split("fix")[0]
    for stem in IDX_STEMS[1:]:
        (flat / f"{stem}.gz").write_bytes(b"")
    check(validate({"data": {"source": "mnist", "root": str(flat)}}), tmp_path / "ws")


def test_a_download_needs_a_writable_root(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    options = {"download": True}
    config = validate({"data": {"source": "mnist", "root": str(blocker / "x"), "options": options}})
    assert "is not a directory" in refused(config, tmp_path / "ws")
    fine = validate(
        {"data": {"source": "cifar10", "root": str(tmp_path / "new"), "options": options}}
    )
    check(fine, tmp_path / "ws")


def test_cifar10_fashion_mnist_npz_and_folder_name_their_files(tmp_path):
    ws = tmp_path / "ws"
    text = refused(validate({"data": {"source": "cifar10"}}), ws)
    assert "--set data.root=DIR --set data.options.download=true" in text
    text = refused(validate({"data": {"source": "cifar10", "root": str(tmp_path)}}), ws)
    assert "data_batch_1" in text and "batches.meta" in text
    text = refused(validate({"data": {"source": "fashion-mnist", "root": str(tmp_path)}}), ws)
    assert "Fashion-MNIST not found" in text and "--set data.root=" in text
    assert "--set data.root=FILE.npz" in refused(validate({"data": {"source": "npz"}}), ws)
    missing = str(tmp_path / "x.npz")
    assert "not a file" in refused(validate({"data": {"source": "npz", "root": missing}}), ws)
    folder = tmp_path / "images"
    (folder / "cat").mkdir(parents=True)
    text = refused(validate({"data": {"source": "folder", "root": str(folder)}}), ws)
    assert "holds no images" in text
    (folder / "cat" / "a.png").write_bytes(b"")
    check(validate({"data": {"source": "folder", "root": str(folder)}}), ws)


def test_data_options_are_the_loaders_own(tmp_path):
    config = validate({"data": {"source": "digits", "options": {"pool_sise": 100}}})
    text = refused(config, tmp_path / "ws", ConfigError)
    assert "data.options.pool_sise is not an option of data source 'digits'" in text
    assert "did you mean --set data.options.pool_size=100?" in text
    assert "val_size" in text and "test_size" in text
    config = validate({"data": {"source": "mnist", "options": {"downlaod": True}}})
    assert "--set data.options.download=true?" in refused(config, tmp_path / "ws", ConfigError)
    # A keyword prepare_pool passes itself would collide at load time.
    config = validate({"data": {"options": {"seed": 4}}})
    text = refused(config, tmp_path / "ws", ConfigError)
    assert "data.options.seed duplicates the parameter campaign.seed" in text
    assert "--set campaign.seed=4" in text


# ------------------------------------------------------------------ device
@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_refused_with_the_fix(tmp_path):
    text = refused(validate({"training": {"device": "cuda"}}), tmp_path / "ws")
    assert text.startswith("training.device is 'cuda' but torch finds no CUDA device here")
    assert "--set training.device=cpu" in text


def test_devices_baldflow_does_not_train_on_are_refused(tmp_path):
    text = refused(validate({"training": {"device": "meta"}}), tmp_path / "ws")
    assert "--set training.device=cpu" in text
    check(validate({"training": {"device": "auto"}}), tmp_path / "ws")


# ------------------------------------------------------------------ tracking
class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 - the name http.server calls
        self.send_response(self.status if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args):
        pass


@pytest.fixture
def health_server():
    servers = []

    def start(status: int) -> str:
        handler = type("Handler", (_Health,), {"status": status})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_tracking_server_must_answer(tmp_path, health_server):
    ws = tmp_path / "ws"
    check(validate({"tracking": {"mlflow_uri": health_server(200)}}), ws)
    down = f"http://127.0.0.1:{_closed_port()}"
    text = refused(validate({"tracking": {"mlflow_uri": down}}), ws)
    assert f"tracking.mlflow_uri {down!r} is not reachable" in text
    assert "--set tracking.mlflow_uri=null" in text
    # A proxy answering 502 for the MLflow behind it: down too.
    text = refused(validate({"tracking": {"mlflow_uri": health_server(502)}}), ws)
    assert "answered 502" in text


def test_a_sqlite_store_must_be_creatable(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    ws = tmp_path / "ws"
    uri = f"sqlite:///{blocker}/mlflow.db"
    text = refused(validate({"tracking": {"mlflow_uri": uri}}), ws)
    assert "is not a directory" in text and "--set tracking.mlflow_uri=" in text
    check(validate({"tracking": {"mlflow_uri": f"sqlite:///{tmp_path}/new/mlflow.db"}}), ws)
    # The default store lives in the workspace: a workspace path below a file cannot hold it.
    text = refused(Config(), blocker / "ws")
    assert "MLflow store" in text and "--workspace" in text


# ------------------------------------------------------------------ the command line
def test_run_with_a_source_that_cannot_load_fails_in_one_line_before_prefect(tmp_path):
    workspace = tmp_path / "ws"
    result = cli("run", "--workspace", str(workspace), "--set", "data.source=mnist")
    assert result.returncode == EXIT_PREFLIGHT == 5
    (line,) = result.stderr.splitlines()
    assert line.startswith("PreflightError: data.source 'mnist' reads its files from data.root")
    assert "starting Prefect" not in result.stdout
    # Nothing started, so nothing is left RUNNING: not even the workspace exists.
    assert not workspace.exists()


def test_an_unreadable_parameter_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("acquisition:\n  batch_size: [1\n")
    result = cli("run", "--workspace", str(tmp_path / "ws"), "--config", str(bad))
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"ConfigError: parameter file {bad} is not valid YAML")


def test_resuming_with_other_parameters_is_only_the_error(tmp_path, tiny):
    workspace = tmp_path / "ws"
    recorded_campaign(workspace, tiny)
    result = cli("run", "--workspace", str(workspace), "--set", "campaign.seed=4")
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("ConfigError: campaign 'tiny' was started with other parameters")
    assert "campaign.seed: was 3, now 4" in line
    assert f"baldflow run --workspace {workspace} --campaign tiny" in line
    assert "starting Prefect" not in result.stdout


def test_campaign_resumes_from_its_recorded_parameters(tmp_path, tiny):
    workspace = tmp_path / "ws"
    # params.yaml describes another campaign; `tiny` started with parameters of its own.
    other = validate({"campaign": {"rounds": 9}, "training": {"num_threads": 2}}).to_dict()
    recorded = recorded_campaign(workspace, tiny, params_yaml=other)
    args = build_parser().parse_args(
        ["run", "-w", str(workspace), "--campaign", "tiny", "--set", "campaign.rounds=7"]
    )
    config = _resolve_config(args, workspace)
    assert config.identity() == recorded.identity()
    assert config.campaign.rounds == 7
    # What may change on resume comes from the run's own parameters (params.yaml here).
    assert config.training.num_threads == 2
    check(config, workspace)
    # A cycle advances the same campaign the same way.
    cycle_args = build_parser().parse_args(["cycle", "-w", str(workspace), "--campaign", "tiny"])
    assert _resolve_config(cycle_args, workspace).identity() == recorded.identity()


def test_campaign_with_an_unknown_name_lists_the_campaigns(tmp_path, tiny, capsys):
    workspace = tmp_path / "ws"
    recorded_campaign(workspace, tiny)
    assert main(["run", "-w", str(workspace), "--campaign", "tinny"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("LookupError: campaign 'tinny' is not in")
    assert "(campaigns: tiny)" in err and "did you mean --campaign tiny?" in err
    assert "--set campaign.name=tinny" in err
    assert main(["run", "-w", str(tmp_path / "nothing"), "--campaign", "tiny"]) == 1
    assert "is not a baldflow workspace" in capsys.readouterr().err


def test_campaign_refuses_overrides_that_change_what_it_acquires(tmp_path, tiny, capsys):
    workspace = tmp_path / "ws"
    recorded_campaign(workspace, tiny, params_yaml=Config().to_dict())
    args = ["run", "-w", str(workspace), "--campaign", "tiny"]
    assert main([*args, "--set", "acquisition.batch_size=6"]) == 2
    assert "acquisition.batch_size: was 5, now 6" in capsys.readouterr().err
    assert main([*args, "--set", "campaign.name=other"]) == 2
    assert "--campaign tiny and campaign.name=other disagree" in capsys.readouterr().err


def test_run_campaign_resumes_and_extends_a_campaign(tmp_path, tiny, prefect_harness):
    import os

    workspace = tmp_path / "ws"
    params = tmp_path / "tiny.yaml"
    params.write_text(yaml.safe_dump(tiny))
    env = {**os.environ, "PREFECT_API_URL": prefect_harness}
    first = cli("run", "-w", str(workspace), "--config", str(params), env=env, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    # The workspace's params.yaml now describes another campaign: nothing of `tiny` repeated.
    (workspace / "params.yaml").write_text(yaml.safe_dump(Config().to_dict()))
    more = ["--campaign", "tiny", "--set", "campaign.rounds=2"]
    second = cli("run", "-w", str(workspace), *more, env=env, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    ws = Workspace(workspace)
    assert ws.completed_rounds("tiny") == [0, 1, 2]
    assert ws.campaigns() == ["tiny"]
    ledger = read_ledger(ws.ledger_path("tiny"))
    assert [r.round for r in ledger].count(2) == tiny["acquisition"]["batch_size"]
    assert {r.strategy for r in ledger if r.round == 2} == {"power-bald"}


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_serve_checks_before_it_schedules_anything(tmp_path, monkeypatch, capsys):
    # A server address that nothing answers: serving must fail on the device, before using it.
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    workspace = tmp_path / "ws"
    code = main(
        ["serve", "-w", str(workspace), "--interval", "60", "--set", "training.device=cuda"]
    )
    assert code == EXIT_PREFLIGHT
    assert "training.device=cpu" in capsys.readouterr().err
    assert not workspace.exists()


def test_a_pool_read_in_place_that_changed_since_the_last_round_is_refused(
    tmp_path, tiny_params, prefect_harness
):
    """The rounds version the pool's manifest; a pool whose files changed afterwards would
    mix data under one campaign: the next run stops in one line naming the fix."""
    import copy

    import numpy as np
    from helpers import run_flow, write_disk_source

    from baldflow.config import validate

    write_disk_source(tmp_path / "source", tiny_params)
    params = copy.deepcopy(tiny_params)
    params["data"] = {"source": "disk", "root": str(tmp_path / "source")}
    run_flow(tmp_path / "ws", params, rounds=0)
    config = validate(params)
    check(config, tmp_path / "ws")  # the same pool: nothing to say

    # Moved elsewhere, the same data is still the campaign's: data.root is where it lies, not
    # what it is (the rounds' manifests are), and the campaign resumes from there.
    import shutil

    shutil.copytree(tmp_path / "source", tmp_path / "moved")
    moved = copy.deepcopy(params)
    moved["data"]["root"] = str(tmp_path / "moved")
    check(validate(moved), tmp_path / "ws")
    assert run_flow(tmp_path / "ws", moved, rounds=1)["stopped"] == "rounds"
    recorded = (tmp_path / "ws" / "data" / "tiny" / "campaign.yaml").read_text()
    assert str(tmp_path / "moved") in recorded  # where a resume by name finds it now

    # A held-out part that changed is refused as well, naming which.
    test_file = tmp_path / "moved" / "test" / "y.npy"
    y = np.load(test_file)
    np.save(test_file, y[::-1].copy())
    with pytest.raises(PreflightError, match="is not the test set campaign 'tiny' was evaluated"):
        check(validate(moved), tmp_path / "ws")

    x_file = tmp_path / "source" / "pool" / "x.npy"
    x = np.load(x_file)
    np.save(x_file, x[::-1].copy())  # same shape, other content
    with pytest.raises(PreflightError) as refused:
        check(config, tmp_path / "ws")
    message = str(refused.value)
    assert "is not the pool campaign 'tiny' was scored on" in message
    assert "--set campaign.name=NEW" in message and "\n" not in message
