"""`baldflow verify` and the audit commands (`history --sample`, `diff`, `report`) on real
workspaces: a report never makes a workspace fail verify, verify reads what it needs without
MLflow or DVC's machinery, names what is wrong and the command that repairs it (a clone behind
its remote, a round run parked for labels of a round another clone committed, a second parent
run), and the audit answers name what they show.

Two clones of one workspace share a bare git remote, a DVC remote directory and a SQLite MLflow
store: ann runs the campaign, bob clones it after round 1 and falls behind while ann goes on.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from helpers import run_flow

from baldflow.cli import main
from baldflow.workspace import LedgerRow, Workspace

pytestmark = pytest.mark.usefixtures("prefect_harness")

CAMPAIGN = "tiny"


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture(scope="module")
def team(tmp_path_factory, prefect_harness, tiny_defaults):
    root = tmp_path_factory.mktemp("verify")
    bare = root / "shared.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    dvc_remote = root / "dvc-remote"
    dvc_remote.mkdir()
    db = root / "mlflow" / "mlflow.db"
    params = copy.deepcopy(tiny_defaults)
    params["tracking"] = {"mlflow_uri": f"sqlite:///{db}", "register_model": False}
    params["training"]["num_threads"] = 1
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    ann, bob = root / "ann", root / "bob"
    assert main(["init", str(ann), "-c", str(path), "--git-remote", str(bare),
                 "--dvc-remote", str(dvc_remote)]) == 0  # fmt: skip
    run_flow(ann, params, rounds=1)
    assert main(["init", str(bob), "--clone", str(bare)]) == 0
    run_flow(ann, params, rounds=3)
    return SimpleNamespace(ann=ann, bob=bob, params=params, db=db, uri=f"sqlite:///{db}")


def copy_of(workspace: Path, tmp_path: Path) -> Path:
    target = tmp_path / workspace.name
    shutil.copytree(workspace, target, symlinks=True)
    return target


# ---------------------------------------------------------------------------- item 1
def test_a_report_stays_out_of_git_and_verify_tells_outputs_from_drift(team, tmp_path, capsys):
    ws = copy_of(team.ann, tmp_path)
    assert main(["verify", "-w", str(ws)]) == 0
    assert main(["report", "-w", str(ws)]) == 0
    assert (ws / f"report-{CAMPAIGN}.html").is_file()
    assert main(["report", "-w", str(ws), "--output", str(ws / "mine.html")]) == 0
    assert git(ws, "status", "--porcelain", "--untracked-files=all") == ""
    capsys.readouterr()
    assert main(["verify", "-w", str(ws)]) == 0
    assert capsys.readouterr().out.strip() == f"{CAMPAIGN}: consistent"

    # A workspace whose .gitignore predates the rule: a report there is still not drift...
    (ws / "mine.html").unlink()
    ignore = ws / ".gitignore"
    ignore.write_text(ignore.read_text().replace("/report-*.html\n", ""))
    (ws / ".git" / "info" / "exclude").write_text("")
    git(ws, "commit", "-q", "-m", "an older .gitignore", "--", ".gitignore")
    assert "report-" in git(ws, "status", "--porcelain", "--untracked-files=all")
    assert main(["verify", "-w", str(ws)]) == 0
    # ...while a file nobody wrote, and a changed tracked file, are, with what fixes each.
    (ws / "notes.txt").write_text("mine\n")
    (ws / "params.yaml").write_text((ws / "params.yaml").read_text() + "# edited\n")
    capsys.readouterr()
    assert main(["verify", "-w", str(ws)]) == 1
    (line,) = [p for p in capsys.readouterr().out.splitlines() if "git status" in p]
    assert "?? notes.txt" in line and "M params.yaml" in line and "report-" not in line
    assert f"`git -C {ws} checkout -- params.yaml`" in line
    assert "remove or commit the untracked files" in line


# ---------------------------------------------------------------------------- item 4
def test_verify_reads_without_mlflow_dvc_or_torch(team):
    code = (
        "import sys; from baldflow.cli import main; code = main(['verify', '-w', sys.argv[1]]); "
        "print(code, sorted(m for m in ('mlflow', 'torch', 'dvc.repo', 'dvc.api', 'prefect') "
        "if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(team.ann)], capture_output=True, text=True, timeout=120
    )
    assert done.stdout.splitlines()[-1] == "0 []", done.stdout + done.stderr


def test_a_clone_behind_its_remote_and_a_run_parked_for_a_round_another_clone_committed(
    team, capsys
):
    from mlflow.tracking import MlflowClient

    from baldflow.workspace.tracking import TAG_DISCARDED, tracker_for

    # bob cloned after round 1; ann has committed rounds 2 and 3 since.
    assert main(["verify", "-w", str(team.bob)]) == 1
    out = capsys.readouterr().out
    assert f"{CAMPAIGN} is behind the remote by 2 rounds (run `baldflow run` or `git pull`)" in out
    assert "never committed" not in out

    # bob's round 2 waits for people's labels, but ann committed round 2 first.
    bob = Workspace(team.bob)
    parent = Workspace(team.ann).ledger(CAMPAIGN)[0].mlflow_run_id
    tracker = tracker_for(team.uri, "baldflow", bob)
    parked = tracker.round_run(parent, CAMPAIGN, 2, {})
    tracker.park(parked, {"test_accuracy": 0.5}, 2)
    assert main(["verify", "-w", str(team.ann)]) == 1
    out = capsys.readouterr().out
    assert (
        f"MLflow run {parked} of round 2 waits for labels (SCHEDULED), but round 2 of "
        f"{CAMPAIGN} was committed with run"
    ) in out
    assert "(run `baldflow run` to retire it)" in out

    # bob's next run takes ann's rounds and retires the parked run.
    run_flow(team.bob, team.params, rounds=3)
    run = MlflowClient(tracking_uri=team.uri).get_run(parked)
    assert run.info.status == "KILLED"
    assert "committed with MLflow run" in run.data.tags[TAG_DISCARDED]
    capsys.readouterr()
    for clone in (team.ann, team.bob):
        assert main(["verify", "-w", str(clone)]) == 0, capsys.readouterr().out


def test_verify_names_a_second_parent_run_and_its_repair(team, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from baldflow.workspace.tracking import TAG_CAMPAIGN, TAG_KIND, TAG_WORKSPACE

    db = tmp_path / "mlflow.db"
    shutil.copy(team.db, db)
    uri = f"sqlite:///{db}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("baldflow")
    ws = Workspace(team.ann)
    tags = {TAG_WORKSPACE: ws.workspace_id, TAG_CAMPAIGN: CAMPAIGN, TAG_KIND: "campaign"}
    stray = client.create_run(experiment.experiment_id, run_name=CAMPAIGN, tags=tags)
    client.set_terminated(stray.info.run_id, "FAILED")
    assert main(["verify", "-w", str(team.ann), "--tracking-uri", uri]) == 1
    out = capsys.readouterr().out
    parent = ws.ledger(CAMPAIGN)[0].mlflow_run_id
    assert "has 2 MLflow campaign (parent) runs in this workspace, expected 1: git records" in out
    assert f"{stray.info.run_id} FAILED is left over (run `baldflow run` to retire it)" in out
    assert f"git records {parent} (round 0's ledger rows)" in out


# ---------------------------------------------------------------------------- item 5
def test_history_of_a_sample_says_never_acquired_or_not_in_the_pool(team, capsys):
    from baldflow.workspace.scores import read_score_table, score_table_path

    ws = Workspace(team.ann)
    ledger = ws.ledger(CAMPAIGN)
    acquired = {row.sample_id for row in ledger}
    table = read_score_table(score_table_path(ws.campaign_dir(CAMPAIGN), 1))
    passed_over = next(s for s in table.column("sample_id").to_pylist() if s not in acquired)

    assert main(["history", "-w", str(ws.root), "--sample", passed_over]) == 0
    out = capsys.readouterr().out
    assert f"sample {passed_over} is in the pool of {CAMPAIGN} but was never acquired" in out
    assert "rank by score" in out and "among" in out

    assert main(["history", "-w", str(ws.root), "--sample", "no-such-sample"]) == 1
    captured = capsys.readouterr()
    assert "not in the pool" in captured.err and "never acquired" not in captured.err

    # Machine-readable answers tell the two apart the same way: [] and 0, or the error and 1.
    for fmt in ("json", "csv"):
        args = ["history", "-w", str(ws.root), "--format", fmt, "--sample"]
        assert main([*args, passed_over]) == 0
        assert "not in the pool" not in capsys.readouterr().err
        assert main([*args, "no-such-sample"]) == 1
        assert "not in the pool" in capsys.readouterr().err

    picked = next(row for row in ledger if row.round == 2 and row.rank == 1)
    assert main(["history", "-w", str(ws.root), "--sample", picked.sample_id]) == 0
    out = capsys.readouterr().out
    assert "position in batch" in out and "2 of 5" in out and "rank in batch" not in out


# ---------------------------------------------------------------------------- item 6
def _row(round_index: int, sample_id: str) -> LedgerRow:
    return LedgerRow(
        campaign="ids", round=round_index, sample_id=sample_id, label=0,
        strategy="initial" if round_index == 0 else "random", rank=0, score=None,
        first_pick_probability=None, selection_key=None, seed=round_index,
        acquired_at="2026-01-01T00:00:00.000Z", mlflow_run_id="run", prefect_flow_run_id="flow",
        labeled_set_md5="",
    )  # fmt: skip


def test_diff_orders_sample_ids_naturally(tmp_path, capsys):
    ws = Workspace.init(tmp_path / "ws")
    ws.commit_round("ids", 0, [_row(0, "5")], summary={"round": 0, "labeled": 1})
    added = ["1322", "a10", "233", "99", "a9"]
    ws.commit_round("ids", 1, [_row(1, s) for s in added], summary={"round": 1, "labeled": 6})
    ws.close()
    assert main(["diff", "-w", str(ws.root), "--from", "0", "--to", "1", "--format", "json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert [r["sample_id"] for r in record["added"]] == ["99", "233", "1322", "a9", "a10"]


# ---------------------------------------------------------------------------- item 18
def test_report_names_round_0_and_the_workspace_not_its_path(team):
    from baldflow.audit.report import render_report

    text, _ = render_report(team.ann)
    assert "Round 0: initial labeled set, 10 samples, balanced by class</h3>" in text
    assert "by initial" not in text
    assert f"workspace {team.ann.name};" in text
    assert str(team.ann) not in text
