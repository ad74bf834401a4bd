"""The workspace with real git and DVC: init, round commits and tags, recovery, the lock."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from baldflow.workspace import (
    LedgerError,
    LedgerRow,
    Workspace,
    WorkspaceError,
    WorkspaceLockedError,
    round_tag,
    workspace_lock,
)
from baldflow.workspace.ledger import (
    labeled_rows_from_ledger,
    md5_of_file,
    read_ledger,
)


def rows(campaign: str, round_index: int, ids: list[str], label: int = 1) -> list[LedgerRow]:
    return [
        LedgerRow(
            campaign=campaign,
            round=round_index,
            sample_id=sid,
            label=label,
            strategy="power-bald",
            rank=i,
            score=0.25 + i,
            first_pick_probability=0.1,
            selection_key=-1.5,
            seed=42,
            acquired_at="2026-01-01T00:00:00.000Z",
            mlflow_run_id="run",
            prefect_flow_run_id="flow",
            labeled_set_md5="",
        )
        for i, sid in enumerate(ids)
    ]


@pytest.fixture
def ws(tmp_path):
    workspace = Workspace.init(tmp_path / "ws", params_text="campaign:\n  rounds: 2\n")
    yield workspace
    workspace.close()


def test_init_makes_git_dvc_remote_params_and_ignores(ws):
    root = ws.root
    assert (root / ".git").is_dir() and (root / ".dvc").is_dir()
    assert Workspace.is_workspace(root)
    config = (root / ".dvc" / "config").read_text()
    assert "analytics = False" in config
    assert "remote = local" in config and "../dvc-remote" in config
    ignored = (root / ".gitignore").read_text()
    for entry in ("/mlflow/", "/.prefect/", "/dvc-remote/", "/.baldflow.lock"):
        assert entry in ignored
    assert yaml.safe_load((root / "params.yaml").read_text()) == {"campaign": {"rounds": 2}}
    assert ws.git("status", "--porcelain").strip() == ""
    # Initialising again changes nothing and adds no commit.
    head = ws.head()
    Workspace.init(root).close()
    assert ws.head() == head


def test_rounds_are_commits_with_tags_and_dvc_versions(ws):
    first = ws.commit_round("c", 0, rows("c", 0, ["a", "b"]), summary={"round": 0})
    second = ws.commit_round("c", 1, rows("c", 1, ["c"], label=2), summary={"round": 1})
    assert ws.completed_rounds("c") == [0, 1]
    assert first.tag == round_tag("c", 0) == "c/round-0000"
    assert ws.git("rev-parse", second.tag + "^{commit}").strip() == second.commit
    ledger = read_ledger(ws.ledger_path("c"))
    assert [r.sample_id for r in ledger] == ["a", "b", "c"]
    # Every row carries the md5 that DVC recorded for the labeled set after its round.
    assert {r.labeled_set_md5 for r in ledger if r.round == 0} == {first.labeled_set_md5}
    dvcfile = yaml.safe_load((ws.campaign_dir("c") / "labeled.csv.dvc").read_text())
    assert dvcfile["outs"][0]["md5"] == second.labeled_set_md5 == md5_of_file(ws.labeled_path("c"))
    for round_index in (0, 1):
        assert ws.labeled_at("c", round_index) == labeled_rows_from_ledger(
            ledger, up_to_round=round_index
        )
    # Pushed to the local remote.
    assert any((ws.root / "dvc-remote").rglob("*"))
    assert ws.git("status", "--porcelain").strip() == ""


def test_duplicates_and_out_of_order_rounds_are_refused(ws):
    ws.commit_round("c", 0, rows("c", 0, ["a"]), summary={"round": 0})
    with pytest.raises(LedgerError, match="already labeled"):
        ws.commit_round("c", 1, rows("c", 1, ["a"]), summary={"round": 1})
    ws.recover("c")
    with pytest.raises(LedgerError, match="expected round 1"):
        ws.commit_round("c", 3, rows("c", 3, ["z"]), summary={"round": 3})


def test_recover_discards_a_half_written_round(ws):
    ws.commit_round("c", 0, rows("c", 0, ["a", "b"]), summary={"round": 0})
    before_ledger = ws.ledger_path("c").read_text()
    before_labeled = ws.labeled_path("c").read_text()
    # What a kill after writing the files, after `dvc add` and after `git add` leaves behind.
    ws.ledger_path("c").write_text(before_ledger + "c,1,x,1,power-bald,0,,,,1,t,r,f,m\n")
    ws.labeled_path("c").write_text(before_labeled + "x,1,1\n")
    (ws.campaign_dir("c") / "stray.tmp").write_text("junk")
    ws.dvc.add([str(ws.labeled_path("c"))])
    ws.git("add", "data/c")
    recovery = ws.recover("c")
    assert recovery.discarded and not recovery.retagged and recovery.last_round == 0
    assert ws.ledger_path("c").read_text() == before_ledger
    assert ws.labeled_path("c").read_text() == before_labeled
    assert not (ws.campaign_dir("c") / "stray.tmp").exists()
    assert ws.git("status", "--porcelain").strip() == ""
    again = ws.recover("c")
    assert not again.discarded


def test_recover_removes_a_campaign_that_never_finished_round_0(ws):
    ws.campaign_dir("new").mkdir(parents=True)
    ws.labeled_path("new").write_text("sample_id,label,round\n")
    recovery = ws.recover("new")
    assert recovery.last_round is None and recovery.discarded
    assert not ws.campaign_dir("new").exists()


def test_recover_tags_a_commit_whose_tag_was_lost(ws):
    ws.commit_round("c", 0, rows("c", 0, ["a"]), summary={"round": 0})
    ws.commit_round("c", 1, rows("c", 1, ["b"]), summary={"round": 1})
    ws.git("tag", "-d", "c/round-0001")
    assert ws.completed_rounds("c") == [0]
    recovery = ws.recover("c")
    assert recovery.retagged and recovery.last_round == 1
    assert ws.git("rev-parse", "c/round-0001^{commit}").strip() == ws.head()


def test_recover_clears_a_stale_git_index_lock(ws):
    ws.commit_round("c", 0, rows("c", 0, ["a"]), summary={"round": 0})
    (ws.root / ".git" / "index.lock").write_text("")
    ws.recover("c")
    ws.commit_round("c", 1, rows("c", 1, ["b"]), summary={"round": 1})
    assert ws.completed_rounds("c") == [0, 1]


def test_campaign_parameters_cannot_change_on_resume(ws):
    ws.commit_round(
        "c",
        0,
        rows("c", 0, ["a"]),
        summary={"round": 0},
        identity={"acquisition": {"strategy": "power-bald"}},
    )
    ws.check_campaign_params("c", {"acquisition": {"strategy": "power-bald"}})
    from baldflow.config import ConfigError

    with pytest.raises(ConfigError, match="acquisition.strategy: was 'power-bald', now 'random'"):
        ws.check_campaign_params("c", {"acquisition": {"strategy": "random"}})


def test_lock_is_exclusive_reentrant_and_released(tmp_path):
    code = (
        "import sys; from baldflow.workspace import workspace_lock, WorkspaceLockedError\n"
        "try:\n"
        f"    with workspace_lock({str(tmp_path)!r}): sys.exit(0)\n"
        "except WorkspaceLockedError as e:\n"
        "    print(e); sys.exit(3)\n"
    )

    def other_process() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)

    with workspace_lock(tmp_path):
        with workspace_lock(tmp_path):
            pass
        # Still held after the nested release: another process cannot take it.
        result = other_process()
        assert result.returncode == 3, result.stderr
        assert f"pid {os.getpid()}" in result.stdout
        assert "only one run may write to a workspace" in result.stdout
    # Released by the outer block: another process takes it. (Taking it again in this process
    # would prove nothing: a lock this process still held would just be re-entered.)
    result = other_process()
    assert result.returncode == 0, result.stdout + result.stderr


def test_lock_of_a_killed_process_is_free_at_once(tmp_path):
    code = (
        "import time, sys; from baldflow.workspace import workspace_lock\n"
        f"with workspace_lock({str(tmp_path)!r}):\n"
        "    print('held', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(WorkspaceLockedError), workspace_lock(tmp_path):
            pass
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while True:
            try:
                with workspace_lock(tmp_path):
                    break
            except WorkspaceLockedError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ledger_file_only_grows(ws):
    ws.commit_round("c", 0, rows("c", 0, ["a"]), summary={"round": 0})
    first = ws.ledger_path("c").read_text()
    ws.commit_round("c", 1, rows("c", 1, ["b"]), summary={"round": 1})
    assert ws.ledger_path("c").read_text().startswith(first)
    assert Path(ws.rounds_path("c")).read_text().count("\n") == 3


def test_a_plain_git_dvc_repository_is_not_taken_for_a_workspace(tmp_path, monkeypatch):
    # The baldflow project itself is a git + DVC repository with data/: running the CLI from
    # its root must not write campaigns into it.
    from dvc.repo import Repo

    from baldflow.cli import _default_workspace

    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    Repo.init(str(project)).close()
    assert not Workspace.is_workspace(project)
    monkeypatch.chdir(project)
    monkeypatch.delenv("BALDFLOW_WORKSPACE", raising=False)
    assert _default_workspace() != "."
    Workspace.init(project).close()
    assert Workspace.is_workspace(project)
    assert _default_workspace() == "."


# Files this process opens while `_OPENED` holds a list. Audit hooks cannot be removed, so one
# is installed on first use and does nothing between uses.
_OPENED: list[tuple[Path, str]] | None = None
_HOOKED = False


def _record_open(event: str, args: tuple) -> None:
    if event == "open" and _OPENED is not None and isinstance(args[0], str | bytes | os.PathLike):
        # A relative path is opened from the working directory: resolve it the same way.
        _OPENED.append((Path(os.getcwd(), os.fsdecode(args[0])), str(args[1])))


@contextlib.contextmanager
def files_opened() -> Iterator[list[tuple[Path, str]]]:
    global _OPENED, _HOOKED
    if not _HOOKED:
        sys.addaudithook(_record_open)
        _HOOKED = True
    _OPENED = opened = []
    try:
        yield opened
    finally:
        _OPENED = None


def remote_object(ws: Workspace, md5: str) -> Path:
    return ws.root / "dvc-remote" / "files" / "md5" / md5[:2] / md5[2:]


def test_versioning_reads_no_pipeline_file_of_the_directory_it_runs_from(ws, tmp_path, monkeypatch):
    # `baldflow run --workspace DIR` from inside a DVC project (benchmarks/bookkeeping.py run
    # from the baldflow repository): `dvc push` by output path looked for stages in that
    # project's dvc.yaml and dvc.lock, once per versioned file, every round.
    project = tmp_path / "project"
    project.mkdir()
    (project / "dvc.yaml").write_text("stages:\n  report:\n    cmd: echo\n    outs: [out.txt]\n")
    (project / "dvc.lock").write_text("schema: '2.0'\nstages:\n  report:\n    cmd: echo\n")
    monkeypatch.chdir(project)
    manifest = {"count": 3, "sha256": "0" * 64}
    for round_index, ids in enumerate([["a", "b"], ["c"]]):
        scores = tmp_path / f"scores-{round_index}.parquet"
        scores.write_bytes(f"not parquet, {round_index}".encode())
        with files_opened() as opened:
            ws.commit_round(
                "c",
                round_index,
                rows("c", round_index, ids),
                summary={"round": round_index},
                pool_manifest=manifest,
                score_table=scores,
            )
        assert [str(path) for path, _ in opened if project in path.parents] == []
    # Still every version of every file in the remote before its commit.
    for dvcfile in ws.campaign_dir("c").rglob("*.dvc"):
        for rev in (round_tag("c", 0), round_tag("c", 1)):
            rel = dvcfile.relative_to(ws.root).as_posix()
            shown = ws.git("show", f"{rev}:{rel}", check=False)
            if shown:
                assert remote_object(ws, yaml.safe_load(shown)["outs"][0]["md5"]).is_file()
    assert ws.git("status", "--porcelain").strip() == ""


def test_a_file_that_did_not_change_is_not_added_again(ws, tmp_path):
    manifest = {"count": 3, "sha256": "0" * 64}
    ws.commit_round("c", 0, rows("c", 0, ["a"]), summary={"round": 0}, pool_manifest=manifest)
    dvcfile = ws.campaign_dir("c") / "pool-manifest.json.dvc"
    before = dvcfile.read_text()
    with files_opened() as opened:
        ws.commit_round("c", 1, rows("c", 1, ["b"]), summary={"round": 1}, pool_manifest=manifest)
    written = {path.name for path, mode in opened if set(mode) & set("wax+")}
    assert "labeled.csv.dvc" in written and "ledger.csv.dvc" in written
    assert "pool-manifest.json.dvc" not in written
    assert dvcfile.read_text() == before
    assert ws.dvc_add([ws.campaign_dir("c") / "pool-manifest.json"]) == []
    assert ws.git("status", "--porcelain").strip() == ""


def test_push_restores_a_lost_remote_object_and_refuses_one_it_cannot_find(ws):
    ws.commit_round("c", 0, rows("c", 0, ["a"]), summary={"round": 0})
    target = ws.labeled_path("c")
    md5 = yaml.safe_load((ws.campaign_dir("c") / "labeled.csv.dvc").read_text())["outs"][0]["md5"]
    out = {"path": target.name, "md5": md5, "hash": "md5"}
    lost = remote_object(ws, md5)
    lost.unlink()
    ws.dvc_push([target], [out])  # a retry: pushes what the remote lacks, twice is harmless
    ws.dvc_push([target], [out])
    assert lost.read_text() == target.read_text()
    lost.unlink()
    cached = ws.root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    cached.chmod(0o644)
    cached.unlink()
    with pytest.raises(WorkspaceError, match=f"did not store {md5}"):
        ws.dvc_push([target], [out])
