"""The `baldflow` command line: fast help, init, documented errors, history and status."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from baldflow.cli import main
from baldflow.workspace import LedgerRow, Workspace


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "baldflow.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def test_help_is_fast_and_imports_nothing_heavy():
    started = time.monotonic()
    result = cli("--help")
    assert result.returncode == 0
    assert time.monotonic() - started < 10
    for command in ("init", "run", "history", "status"):
        assert command in result.stdout
    code = (
        "import sys, baldflow.cli\n"
        "heavy = [m for m in ('torch', 'prefect', 'mlflow', 'dvc', 'pandas') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


def test_run_with_a_bad_parameter_fails_before_any_work(tmp_path):
    workspace = tmp_path / "ws"
    result = cli("run", "--workspace", str(workspace), "--set", "acquisition.batch_size=0")
    assert result.returncode == 2
    assert result.stderr.strip() == "ConfigError: acquisition.batch_size must be >= 1, got 0"
    # Validation comes first: no workspace was created.
    assert not workspace.exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("acquisition.strategy=bald-power", "acquisition.strategy must be one of"),
        ("model.name=vit", "model.name must be one of"),
        ("data.source=imagenet", "data.source must be one of"),
        ("campaign.name=Bad_Name", "campaign.name must be lowercase"),
    ],
)
def test_run_with_unknown_names_lists_the_valid_ones(tmp_path, capsys, override, message):
    workspace = tmp_path / "ws"
    assert main(["run", "--workspace", str(workspace), "--set", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ConfigError: ") and message in err
    assert not workspace.exists()


def test_run_with_a_missing_config_file(tmp_path):
    result = cli("run", "--workspace", str(tmp_path / "ws"), "--config", str(tmp_path / "no.yaml"))
    assert result.returncode == 2
    assert "does not exist" in result.stderr


def test_init_creates_a_workspace_with_params(tmp_path, capsys):
    workspace = tmp_path / "ws"
    assert main(["init", str(workspace)]) == 0
    assert "workspace ready" in capsys.readouterr().out
    assert Workspace.is_workspace(workspace)
    from baldflow.config import load_config

    assert load_config(workspace / "params.yaml").campaign.name == "digits-power-bald"


def test_init_copies_a_given_config_and_validates_it(tmp_path, capsys):
    params = tmp_path / "p.yaml"
    params.write_text("acquisition:\n  batch_size: 3\n")
    assert main(["init", str(tmp_path / "ws"), "--config", str(params)]) == 0
    assert (tmp_path / "ws" / "params.yaml").read_text() == params.read_text()
    params.write_text("acquisition:\n  batch_size: -3\n")
    assert main(["init", str(tmp_path / "ws2"), "--config", str(params)]) == 2
    assert "acquisition.batch_size must be >= 1, got -3" in capsys.readouterr().err
    assert not (tmp_path / "ws2").exists()


@pytest.fixture
def workspace_with_ledger(tmp_path):
    ws = Workspace.init(tmp_path / "ws")
    for round_index, ids in enumerate([["a", "b"], ["c"], ["d", "e"]]):
        rows = [
            LedgerRow(
                "camp",
                round_index,
                sid,
                4,
                "power-bald",
                rank,
                0.5 - rank / 10,
                0.2,
                -0.7,
                11,
                "2026-01-01T00:00:00.000Z",
                f"run{round_index}",
                "flow",
                "",
            )
            for rank, sid in enumerate(ids)
        ]
        ws.commit_round(
            "camp",
            round_index,
            rows,
            summary={"round": round_index, "labeled": 0, "test_accuracy": 0.5 + round_index / 10},
            identity={"acquisition": {"strategy": "power-bald"}},
        )
    ws.close()
    return ws.root


def test_history_filters_and_formats(workspace_with_ledger, capsys):
    ws = str(workspace_with_ledger)
    assert main(["history", "-w", ws, "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert out == (workspace_with_ledger / "data" / "camp" / "ledger.csv").read_text()
    assert main(["history", "-w", ws, "--round", "2", "--format", "json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["sample_id"] for r in records] == ["d", "e"]
    assert records[1]["score"] == pytest.approx(0.4)
    assert main(["history", "-w", ws, "--sample", "c", "--format", "json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert (record["round"], record["mlflow_run_id"]) == (1, "run1")
    assert main(["history", "-w", ws, "--campaign", "nope"]) == 1
    assert "campaign 'nope' is not in" in capsys.readouterr().err


def test_history_table_and_status(workspace_with_ledger, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    ws = str(workspace_with_ledger)
    assert main(["history", "-w", ws, "--round", "1"]) == 0
    table = capsys.readouterr().out
    assert "camp" in table and "run1" in table
    # Only round 1's row: the table applies the filter as the other formats do.
    assert "run0" not in table and "run2" not in table
    assert main(["status", "-w", ws, "--format", "json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["rounds_done"] == 2 and record["labeled"] == 5
    assert record["latest_test_accuracy"] == pytest.approx(0.7)
    assert record["strategy"] == "power-bald"
    assert main(["status", "-w", ws]) == 0
    assert "camp/round-0002" in capsys.readouterr().out


def test_commands_on_a_directory_that_is_not_a_workspace(tmp_path, capsys):
    assert main(["status", "-w", str(tmp_path)]) == 1
    assert "not a baldflow workspace" in capsys.readouterr().err
    assert main(["history", "-w", str(tmp_path)]) == 1
