"""What the CLI prints and writes for people: help, hints that run as printed, full-width tables
in pipes, one vocabulary for rounds, the report's numbers and class names, fast audit reads."""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from baldflow.cli import HIDDEN_ALIASES, build_parser, main
from baldflow.workspace import LedgerRow, Workspace

# A PATH without this environment's bin directory: what a new shell has before activation.
BARE_PATH = "/usr/bin:/bin"
CLASS_NAMES = ["cat", "dog", "emu"]


def run_cli(*args: str, env: dict | None = None, code: str | None = None):
    """The CLI in a fresh interpreter (stdout is a pipe, never a terminal)."""
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "baldflow.cli"]
    environ = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    environ.update(env or {})
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=180, env=environ
    )


def _config(npz: Path) -> dict:
    return {
        "campaign": {"name": "pets", "seed": 0, "rounds": 5, "initial_per_class": 1},
        "data": {"source": "npz", "root": str(npz)},
        "model": {"name": "mlp", "dropout": 0.5},
        "acquisition": {"strategy": "power-bald", "batch_size": 3},
    }


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """A workspace with an npz campaign whose classes have names, three rounds (0, 1, 2), and
    a real MLflow store holding round 1's run."""
    from mlflow.tracking import MlflowClient

    from baldflow.compute import campaign_data
    from baldflow.config import validate
    from baldflow.workspace.tracking import local_tracking_uri

    root = tmp_path_factory.mktemp("output")
    rng = np.random.default_rng(0)
    npz = root / "pets.npz"
    np.savez(
        npz,
        X=rng.integers(0, 256, size=(40, 8, 8), dtype=np.uint8),
        y=np.arange(40) % 3,
        ids=np.array([f"img{i:02d}" for i in range(40)]),
        class_names=np.array(CLASS_NAMES),
        X_test=rng.integers(0, 256, size=(6, 8, 8), dtype=np.uint8),
        y_test=np.arange(6) % 3,
    )
    config = _config(npz)
    data = campaign_data.prepare_data(validate(config))
    pool_ids, pool_y = data.splits.pool_ids, data.splits.pool_y.tolist()

    ws = Workspace.init(root / "ws")
    uri = local_tracking_uri(ws.mlflow_dir)
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("baldflow")
    run = client.create_run(experiment_id, run_name="pets-round-0001")
    run_id = run.info.run_id
    for key, value in {"test_accuracy": 0.7493008, "test_nll": 0.61, "epochs": 9.0}.items():
        client.log_metric(run_id, key, value)
    client.log_metric(run_id, "train_loss", float("nan"))
    client.set_tag(run_id, "baldflow.round", "1")
    client.set_terminated(run_id, "FINISHED")

    batches = [pool_ids[0:3], pool_ids[3:6], pool_ids[6:8]]
    row_of = {sid: i for i, sid in enumerate(pool_ids)}
    labeled = 0
    for round_index, ids in enumerate(batches):
        rows = [
            LedgerRow(
                campaign="pets",
                round=round_index,
                sample_id=sid,
                label=pool_y[row_of[sid]],
                strategy="initial" if round_index == 0 else "power-bald",
                rank=rank,
                score=None if round_index == 0 else 0.31234567,
                first_pick_probability=None if round_index == 0 else 0.2,
                selection_key=None if round_index == 0 else -0.7,
                seed=1000 + round_index,
                acquired_at="2026-01-01T00:00:00.000Z",
                mlflow_run_id=run_id,
                prefect_flow_run_id="flow",
                labeled_set_md5="",
                labeled_by="simulated oracle",
            )
            for rank, sid in enumerate(ids)
        ]
        summary = {"round": round_index, "train_size": labeled, "labeled": labeled + len(ids)}
        if round_index:
            summary.update(test_accuracy=0.7493008, seconds_acquisition=0.1141893)
        labeled += len(ids)
        ws.commit_round("pets", round_index, rows, summary=summary, identity=config)
    ws.close()
    return {
        "root": ws.root,
        "run_id": run_id,
        "experiment_id": experiment_id,
        "uri": uri,
        "labels": {sid: pool_y[row_of[sid]] for ids in batches for sid in ids},
    }


# ---------------------------------------------------------------------------- help
def test_version():
    from baldflow import __version__

    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"baldflow {__version__}"


def _parsers(parser: argparse.ArgumentParser, name: str = "baldflow"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for sub_name, sub in action.choices.items():
                if sub_name in HIDDEN_ALIASES:
                    continue  # an old name kept working, deliberately not listed
                assert helps.get(sub_name), f"{name} {sub_name} has no one-line help"
                yield from _parsers(sub, f"{name} {sub_name}")


def test_every_command_and_option_is_described_with_its_default():
    parser = build_parser()
    seen = 0
    for name, command in _parsers(parser):
        assert command.description, f"`{name} --help` has no description"
        required_groups = [g for g in command._mutually_exclusive_groups if g.required]
        formatter = command._get_formatter()
        for action in command._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            label = f"{name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help, f"{label} has no help"
            seen += 1
            text = formatter._expand_help(action)
            needs_default = not (
                action.required
                or action.nargs == 0  # flags: off unless given
                or any(action in g._group_actions for g in required_groups)
                or (not action.option_strings and action.nargs not in ("?", "*"))
            )
            if needs_default:
                assert "default" in text, f"{label}: the help does not say its default: {text!r}"
    assert seen > 40
    # Defaults are shown as values, e.g. the --format and --port ones.
    help_text = run_cli("status", "--help").stdout
    assert "(default: table)" in " ".join(help_text.split())
    assert "(default: 4200)" in " ".join(run_cli("server", "--help").stdout.split())


# ---------------------------------------------------------------------------- hints
def test_shell_command_names_this_environment_when_path_would_not(monkeypatch):
    from baldflow.audit.hints import environment_bin, shell_command

    bin_dir = environment_bin()
    if not (bin_dir / "baldflow").is_file():
        pytest.skip("baldflow is not installed in the running environment")
    monkeypatch.setenv("PATH", BARE_PATH)
    assert shell_command("baldflow") == shlex.quote(str(bin_dir / "baldflow"))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{BARE_PATH}")
    assert shell_command("baldflow") == "baldflow"
    # A program this environment lacks is left to PATH.
    assert shell_command("git") == "git"


def test_printed_commands_run_in_a_shell_without_the_environment(tmp_path):
    if not (Path(sys.executable).parent / "baldflow").is_file():
        pytest.skip("baldflow is not installed in the running environment")
    result = run_cli("init", str(tmp_path / "ws"), env={"PATH": BARE_PATH})
    assert result.returncode == 0, result.stderr
    (hint,) = [line for line in result.stdout.splitlines() if "run a campaign:" in line]
    command = hint.split("run a campaign:", 1)[1].strip()
    program = shlex.split(command)[0]
    assert shutil.which(program, path=BARE_PATH), f"{program!r} is not found in a new shell"
    # And it is the command it claims to be: its `status` runs in a shell with a bare PATH.
    status = command.replace(" run ", " status ", 1)
    shell = subprocess.run(
        ["/bin/sh", "-c", status], capture_output=True, text=True, env={"PATH": BARE_PATH}
    )
    assert shell.returncode == 0, shell.stderr
    assert "no campaigns yet" in shell.stdout


def test_where_to_look_links_the_runs_view_and_runs_as_printed(audited, monkeypatch):
    from baldflow.audit.hints import where_to_look

    monkeypatch.setenv("PATH", BARE_PATH)
    result = {
        "workspace": str(audited["root"]),
        "campaign": "pets",
        "tracking_uri": audited["uri"],
        "parent_run_id": audited["run_id"],
    }
    lines = where_to_look(result)
    text = "\n".join(lines)
    # MLflow 3 opens /#/experiments/<id> on its GenAI overview; the runs table is /runs.
    assert f"http://127.0.0.1:5000/#/experiments/{audited['experiment_id']}/runs" in text
    assert "http://127.0.0.1:4200" in text
    commands = [
        line.split(":", 1)[1].strip()
        for line in lines[1:]
        if line.strip() and not line.strip().startswith("then open")
    ]
    for command in commands:
        words = shlex.split(command)
        program = next(w for w in words if "=" not in w)
        assert shutil.which(program, path=BARE_PATH), f"{command!r} fails in a new shell"
    server = where_to_look({**result, "tracking_uri": "http://mlflow.example:5000/"}, 7)
    assert "  MLflow UI:     http://mlflow.example:5000/#/experiments/7/runs" in server


# ---------------------------------------------------------------------------- tables
def test_tables_keep_their_full_width_in_a_pipe(audited):
    result = run_cli("history", "-w", str(audited["root"]))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) > 80
    # Nothing folded: each sample's row holds its id, its seed and its whole run id.
    for sid in audited["labels"]:
        (row,) = [line for line in lines if f" {sid} " in line]
        assert audited["run_id"] in row
    # A width the user asks for still rules.
    narrow = run_cli("history", "-w", str(audited["root"]), env={"COLUMNS": "60"})
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 60


def test_history_table_shows_the_round_seed(audited, capsys):
    assert main(["history", "-w", str(audited["root"]), "--round", "2"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "sample_id" in line)
    assert "seed" in header.split()[header.split().index("sel.") :]
    assert "1002" in out


def test_status_and_report_count_rounds_alike(audited, capsys):
    root = str(audited["root"])
    assert main(["status", "-w", root, "--format", "json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["rounds_done"] == 2
    assert main(["status", "-w", root]) == 0
    assert "acquisition rounds after round 0" in capsys.readouterr().out
    from baldflow.audit.report import render_report

    text, _ = render_report(root)
    assert "2 rounds done after the initial labeled set (round 0)" in text
    assert "completed round(s)" not in text


def test_report_formats_numbers_and_names_classes(audited):
    from baldflow.audit.report import render_report

    text, name = render_report(audited["root"])
    assert name == "pets"
    assert "0.7493" in text and "0.7493008" not in text
    assert "0.11" in text and "0.1141893" not in text
    assert "0 (initial set)" in text
    # Labels by class name, with the index the ledger stores beside it.
    for sid, label in audited["labels"].items():
        assert (
            f"<td class='id'>{sid}</td><td class='id'>{CLASS_NAMES[label]} ({label})</td>" in text
        )
    # The ledger table has the round seed.
    assert "<th>seed</th>" in text and "<td>1002</td>" in text


def test_report_draws_without_matplotlib(audited, tmp_path):
    out = tmp_path / "report.html"
    code = (
        "import sys\n"
        "from baldflow.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "assert 'matplotlib' not in sys.modules, 'the report imported matplotlib'\n"
        "sys.exit(code)\n"
    )
    result = run_cli("report", "-w", str(audited["root"]), "-o", str(out), code=code)
    assert result.returncode == 0, result.stderr
    text = out.read_text(encoding="utf-8")
    # The learning curve and one contact sheet per round, all inline PNGs.
    assert text.count("src='data:image/png;base64,") == 4


def test_learning_curve_and_contact_sheet_are_pngs():
    import io

    import torch
    from PIL import Image

    from baldflow.figures.plots import learning_curve_png, nice_ticks
    from baldflow.figures.thumbnails import contact_sheet

    rounds = [{"train_size": 20 + 10 * i, "test_accuracy": 0.7 + i / 100} for i in range(5)]
    for rows in (rounds, [], rounds[:1]):
        png = learning_curve_png(rows, "$x$ [red]title[/red]")
        assert Image.open(io.BytesIO(png)).size == (630, 324)
    sheet = contact_sheet(torch.rand(12, 3, 32, 32), [f"id{i}" for i in range(12)], columns=5)
    assert Image.open(io.BytesIO(sheet)).size[0] == 5 * 112
    assert nice_ticks(0.749, 0.961) == [0.75, 0.8, 0.85, 0.9, 0.95]
    assert nice_ticks(20, 260, integer=True) == [50, 100, 150, 200, 250]


# ---------------------------------------------------------------------------- show
def test_show_reads_mlflow_without_importing_it_and_links_the_run(audited):
    code = (
        "import sys\n"
        "from baldflow.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "assert 'mlflow' not in sys.modules, 'show imported mlflow'\n"
        "sys.exit(code)\n"
    )
    result = run_cli("show", "-w", str(audited["root"]), "--round", "1", code=code)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"{audited['run_id']} (FINISHED)" in out
    assert "test_accuracy 0.7493" in out
    url = f"http://127.0.0.1:5000/#/experiments/{audited['experiment_id']}/runs/{audited['run_id']}"
    assert url in out
    assert f"ui --backend-store-uri {audited['uri']}" in out


def test_the_sqlite_reader_agrees_with_mlflow(audited):
    from baldflow.audit.queries import _read_client_run, read_mlflow_run

    fast = read_mlflow_run(audited["uri"], audited["run_id"])
    slow = _read_client_run(audited["uri"], audited["run_id"])
    assert math.isnan(fast["metrics"].pop("train_loss"))
    assert math.isnan(slow["metrics"].pop("train_loss"))
    assert fast == slow
    assert fast["experiment_id"] == audited["experiment_id"]
    missing = read_mlflow_run(audited["uri"], "0" * 32)
    assert "error" in missing


# ---------------------------------------------------------------------------- diff
def test_diff_refuses_a_reversed_range(audited, capsys):
    assert main(["diff", "-w", str(audited["root"]), "--from", "2", "--to", "1"]) == 1
    err = capsys.readouterr().err
    assert "--from 2 is after --to 1" in err and "--from 1 --to 2" in err


def test_diff_reports_rewritten_history_as_tables(capsys):
    from baldflow.audit.report import print_diff

    print_diff(
        {
            "campaign": "pets",
            "from": {"round": 1, "tag": "pets/round-0001", "size": 6},
            "to": {"round": 2, "tag": "pets/round-0002", "size": 6},
            "added": [{"sample_id": "img09", "label": 1, "round": 2}],
            "removed": [{"sample_id": "img04", "label": 2, "round": 1}],
            "relabeled": [{"sample_id": "img05", "label_from": 0, "label_to": 1}],
        }
    )
    out = capsys.readouterr().out
    assert "[{" not in out and "{'" not in out
    assert "1 removed" in out and "img04" in out
    assert "1 relabeled" in out and "img05" in out
    assert "history at these tags was rewritten" in " ".join(out.split())


def test_a_round_prints_no_mlflow_validation_note(tmp_path, tiny_params, prefect_harness):
    """Saving a round's model for the registry validates its input example; MLflow says so at
    INFO once per round, which buried the round lines. A real round's output has no such line,
    and the model is registered all the same."""
    import yaml
    from mlflow.tracking import MlflowClient

    from baldflow.workspace.registry import registered_model_name
    from baldflow.workspace.tracking import local_tracking_uri

    tiny_params["campaign"]["rounds"] = 1
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params))
    workspace = tmp_path / "ws"
    done = run_cli(
        "run", "-w", str(workspace), "-c", str(params), env={"PREFECT_API_URL": prefect_harness}
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "round 1: trained on 10 labels" in output
    assert "Validating input example" not in output, output
    uri = local_tracking_uri(workspace / "mlflow")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert client.search_model_versions(f"name = '{registered_model_name('tiny')}'")
