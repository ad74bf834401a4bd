"""Team mode: a workspace shared through a git remote and a DVC remote by two clones.

Two operators run the same campaign from two clones at the same time, as real processes,
against the same remotes and the team stack's MLflow server (PostgreSQL, proxied artifacts).
Whatever they race for, the history must come out as one operator alone would have left it:
contiguous round tags, the ledger equal to DVC's labeled set at every tag, no sample twice,
one FINISHED MLflow run per committed round, on both clones and on the remote.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from helpers import run_flow

from baldflow.faults import FAULT_ENV, FAULT_FILE_ENV, FAULT_TRACE_ENV
from baldflow.workspace import Workspace, remote
from baldflow.workspace.consistency import check_workspace
from baldflow.workspace.tracking import TAG_CLONE, TAG_DISCARDED, TAG_GIT_REMOTE, TAG_OPERATOR

BALDFLOW = [sys.executable, "-c", "import sys; from baldflow.cli import main; sys.exit(main())"]
CAMPAIGN = "tiny"


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


def env_for(operator: str, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in (FAULT_ENV, FAULT_FILE_ENV, FAULT_TRACE_ENV, "PREFECT_API_URL", "PREFECT_HOME")
    }  # each operator's temporary Prefect server keeps its database in the operator's workspace
    env.update(BALDFLOW_OPERATOR=operator, **extra)
    return env


def start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with log.open("w") as handle:
        return subprocess.Popen(
            [*BALDFLOW, *args], stdout=handle, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )  # fmt: skip


def finish(proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    try:
        code = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    assert code == 0, log.read_text()[-6000:]


def run(args: list[str], log: Path, env: dict[str, str]) -> None:
    finish(start(args, log, env), log)


def remote_tags(bare: Path) -> list[str]:
    return sorted(git(bare, "tag", "--list", f"{CAMPAIGN}/round-*").split())


def shared_campaign(
    root: Path, tiny_params: dict, mlflow_uri: str, *, register_model: bool = False
) -> tuple[Path, Path, Path, dict]:
    """An empty bare git repository, a DVC remote directory and the campaign's parameters
    (params.yaml in `root`), tracked on `mlflow_uri` in an experiment of its own."""
    bare = root / "shared.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    dvc_remote = root / "dvc-remote"
    dvc_remote.mkdir()
    params = dict(tiny_params)
    params["tracking"] = {
        "mlflow_uri": mlflow_uri,
        "experiment": f"team-{uuid.uuid4().hex[:8]}",
        "register_model": register_model,
    }
    params["training"] = {**params["training"], "num_threads": 1}
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return bare, dvc_remote, path, params


@pytest.fixture
def shared(tmp_path, tiny_params, team_stack):
    """shared_campaign on the team stack's MLflow server, the registry off (it has tests of
    its own, test_registry.py; here it only costs time)."""
    return shared_campaign(tmp_path, tiny_params, team_stack.mlflow_uri)


def make_clones(tmp_path: Path, shared) -> tuple[Path, Path]:
    bare, dvc_remote, params_path, _ = shared
    a, b = tmp_path / "ann", tmp_path / "bob"
    run(
        ["init", str(a), "-c", str(params_path), "--git-remote", str(bare),
         "--dvc-remote", str(dvc_remote)],
        tmp_path / "init.log", env_for("ann"),
    )  # fmt: skip
    run(["init", str(b), "--clone", str(bare)], tmp_path / "clone.log", env_for("bob"))
    return a, b


def check_invariants(clones: list[Path], bare: Path, params: dict, rounds: int) -> None:
    expected = [f"{CAMPAIGN}/round-{r:04d}" for r in range(rounds + 1)]
    assert remote_tags(bare) == expected
    head = git(bare, "rev-parse", "main")
    for clone in clones:
        assert git(clone, "rev-parse", "HEAD") == head, f"{clone} is not level with the remote"
        assert sorted(git(clone, "tag", "--list", f"{CAMPAIGN}/round-*").split()) == expected
        problems = check_workspace(
            clone,
            [CAMPAIGN],
            tracking_uri=params["tracking"]["mlflow_uri"],
            experiment=params["tracking"]["experiment"],
        )
        assert problems == {CAMPAIGN: []}, problems
        ws = Workspace(clone)
        ids = [row.sample_id for row in ws.ledger(CAMPAIGN)]
        assert len(ids) == len(set(ids)), "a sample was acquired twice"
        assert sorted({row.round for row in ws.ledger(CAMPAIGN)}) == list(range(rounds + 1))


def round_runs(params: dict) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=params["tracking"]["mlflow_uri"])
    experiment = client.get_experiment_by_name(params["tracking"]["experiment"])
    return client.search_runs(
        [experiment.experiment_id], filter_string="tags.`baldflow.kind` = 'round'"
    )


def test_two_operators_racing_on_two_clones_leave_one_history(tmp_path, shared):
    bare, _, _, params = shared
    rounds = 6
    a, b = make_clones(tmp_path, shared)
    # Both stop right before pushing their round 2; Ann goes on first, Bob once Ann's round 2
    # is on the remote: one race is certain, however the processes are scheduled. (With Bob
    # alone paused, Ann could push every round before Bob's first sync, once rounds got fast.)
    ann_pause, bob_pause = tmp_path / "ann-paused", tmp_path / "bob-paused"

    def paused(operator: str, marker: Path) -> dict[str, str]:
        spec = {FAULT_ENV: "claim-round:before:2:pause", FAULT_FILE_ENV: str(marker)}
        return env_for(operator, **spec)

    def wait_until(done, ann_may_finish: bool = False) -> None:
        deadline = time.monotonic() + 240
        while not done():
            assert time.monotonic() < deadline, (tmp_path / "bob.log").read_text()[-4000:]
            assert bob.poll() is None, (tmp_path / "bob.log").read_text()[-4000:]
            ann_ok = (None, 0) if ann_may_finish else (None,)
            assert ann.poll() in ann_ok, (tmp_path / "ann.log").read_text()[-4000:]
            time.sleep(0.3)

    args = ["run", "--set", f"campaign.rounds={rounds}"]
    ann = start([*args, "--workspace", str(a)], tmp_path / "ann.log", paused("ann", ann_pause))
    bob = start([*args, "--workspace", str(b)], tmp_path / "bob.log", paused("bob", bob_pause))
    try:
        wait_until(lambda: ann_pause.exists() and bob_pause.exists())
        Path(f"{ann_pause}.release").touch()
        wait_until(lambda: f"{CAMPAIGN}/round-0002" in remote_tags(bare), ann_may_finish=True)
        Path(f"{bob_pause}.release").touch()
        finish(ann, tmp_path / "ann.log")
        finish(bob, tmp_path / "bob.log")
    finally:
        for proc in (ann, bob):
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()

    check_invariants([a, b], bare, params, rounds)
    bob_log = (tmp_path / "bob.log").read_text()
    assert "committed first by another clone" in bob_log
    runs = round_runs(params)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert sorted(int(r.data.tags["baldflow.round"]) for r in finished) == list(
        range(1, rounds + 1)
    )
    lost = [r for r in runs if TAG_DISCARDED in r.data.tags]
    assert lost, "bob's round 2 lost the race: its run should say so"
    assert all(r.info.status == "KILLED" for r in lost)
    assert any(r.data.tags[TAG_OPERATOR] == "bob" and r.data.tags["baldflow.round"] == "2"
               for r in lost)  # fmt: skip
    for run_ in finished:
        assert run_.data.tags[TAG_GIT_REMOTE] == str(bare)
        assert run_.data.tags[TAG_OPERATOR] in ("ann", "bob")
        assert run_.data.tags[TAG_CLONE]
    print(
        f"two operators, {rounds} rounds: ann committed "
        f"{sum(r.data.tags[TAG_OPERATOR] == 'ann' for r in finished)}, bob "
        f"{sum(r.data.tags[TAG_OPERATOR] == 'bob' for r in finished)}; "
        f"{len(lost)} round(s) lost a race and were discarded"
    )


def run_as(operator: str, workspace: Path, params: dict, rounds: int) -> None:
    """The campaign flow in this process (the session's Prefect server), as `operator`."""
    run_flow(workspace, params, rounds=rounds, env={"BALDFLOW_OPERATOR": operator})


def test_a_clone_that_died_before_its_push_takes_the_winners_round(
    tmp_path, shared, prefect_harness
):
    """Bob commits round 1 and is killed before pushing it; Ann commits her round 1. Bob's
    next run drops his round 1 (its run ends KILLED) and carries on from Ann's."""
    bare, dvc_remote, params_path, params = shared
    a, b = tmp_path / "ann", tmp_path / "bob"
    with Workspace.init(a, params_text=params_path.read_text(), remote=str(dvc_remote)) as ws:
        remote.connect(ws, str(bare))
    remote.clone(str(bare), b).close()
    run_as("ann", a, params, 0)
    # Bob's run is a process of its own, killed for real between commit and push.
    killed = start(
        ["run", "--workspace", str(b), "--set", "campaign.rounds=1"], tmp_path / "bob.log",
        env_for("bob", **{FAULT_ENV: "claim-round:before:1:kill"}),
    )  # fmt: skip
    assert killed.wait(timeout=300) != 0, (tmp_path / "bob.log").read_text()[-4000:]
    bob_round = git(b, "rev-parse", f"{CAMPAIGN}/round-0001")
    assert f"{CAMPAIGN}/round-0001" not in remote_tags(bare)
    run_as("ann", a, params, 1)
    run_as("bob", b, params, 2)
    assert git(bare, "rev-parse", f"{CAMPAIGN}/round-0001") != bob_round
    assert git(b, "rev-parse", f"{CAMPAIGN}/round-0001") != bob_round
    run_as("ann", a, params, 2)
    check_invariants([a, b], bare, params, 2)
    by_status = {}
    for run_ in round_runs(params):
        by_status.setdefault(run_.info.status, []).append(run_.data.tags[TAG_OPERATOR])
    assert by_status == {"FINISHED": ["ann", "bob"], "KILLED": ["bob"]} or by_status == {
        "FINISHED": ["bob", "ann"],
        "KILLED": ["bob"],
    }


def test_joining_and_publishing_refuse_what_would_mix_histories(tmp_path):
    plain = tmp_path / "plain.git"
    subprocess.run(["git", "init", "-q", "--bare", str(plain)], check=True)
    other = tmp_path / "other"
    subprocess.run(["git", "init", "-q", "-b", "main", str(other)], check=True)
    git(other, "-c", "user.name=x", "-c", "user.email=x@y", "commit", "-q", "--allow-empty",
        "-m", "not a workspace")  # fmt: skip
    git(other, "push", "-q", str(plain), "main")
    with pytest.raises(remote.RemoteError, match="not a baldflow workspace"):
        remote.clone(str(plain), tmp_path / "joined")
    ws = Workspace.init(tmp_path / "ws")
    with pytest.raises(remote.RemoteError, match="another history"):
        remote.connect(ws, str(plain))
    ws.close()
    with pytest.raises(remote.RemoteError, match="exists and is not empty"):
        remote.clone(str(plain), tmp_path / "ws")


def test_a_secured_tracking_server_needs_a_login_and_records_who_ran(
    tmp_path, tiny_params, team_mlflow_auth, prefect_harness, monkeypatch
):
    """Without credentials the run stops before any work with one line (exit 5); with an
    MLflow user it runs, and the runs and the ledger name that user as the operator."""
    from baldflow.stack.mlflow_server import create_user

    uri, admin, admin_password = team_mlflow_auth
    params = dict(tiny_params)
    params["campaign"] = {**params["campaign"], "rounds": 1}
    params["tracking"] = {"mlflow_uri": uri, "experiment": "secured", "register_model": False}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    env = env_for("", MLFLOW_TRACKING_USERNAME="", MLFLOW_TRACKING_PASSWORD="")
    env.pop("BALDFLOW_OPERATOR")
    refused = subprocess.run(
        [*BALDFLOW, "run", "--workspace", str(tmp_path / "ws"), "-c", str(path)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 5, refused.stderr
    assert "requires a login" in refused.stderr and "MLFLOW_TRACKING_USERNAME" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (tmp_path / "ws").exists()

    password = "alice-" + uuid.uuid4().hex
    create_user(uri, admin, admin_password, "alice", password)
    monkeypatch.delenv("BALDFLOW_OPERATOR", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    from baldflow.flows.campaign import campaign_flow

    campaign_flow(workspace=str(tmp_path / "ws"), params=params)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("secured")
    runs = client.search_runs([experiment.experiment_id])
    assert {r.data.tags[TAG_OPERATOR] for r in runs} == {"alice"}
    assert {r.info.user_id for r in runs} == {"alice"}


def test_a_shared_prefect_server_runs_one_round_of_a_workspace_at_a_time(
    tmp_path, shared, team_stack
):
    """With the team's Prefect server, a second clone's cycle is skipped while the first
    computes a round, and two clones running together never race for a round."""
    bare, _, _, params = shared
    a, b = make_clones(tmp_path, shared)
    pause = tmp_path / "ann-paused"
    api = {"PREFECT_API_URL": team_stack.prefect_api_url}
    waiter = None
    ann = start(
        ["run", "--workspace", str(a), "--set", "campaign.rounds=1"], tmp_path / "ann.log",
        env_for("ann", **api, **{FAULT_ENV: "train:after:1:pause", FAULT_FILE_ENV: str(pause)}),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not pause.exists():
            assert time.monotonic() < deadline and ann.poll() is None, (
                tmp_path / "ann.log"
            ).read_text()[-4000:]
            time.sleep(0.3)
        cycle = subprocess.run(
            [*BALDFLOW, "cycle", "--workspace", str(b)],
            capture_output=True, text=True, env=env_for("bob", **api), timeout=240,
        )  # fmt: skip
        said = cycle.stdout + cycle.stderr
        assert cycle.returncode == 3, said
        assert "skipped" in cycle.stdout
        # One INFO line naming who holds the slot; no ERROR, no TimeoutError.
        skips = [line for line in said.splitlines() if "held by" in line]
        assert len(skips) == 1 and "INFO" in skips[0] and "held by ann (clone " in skips[0], said
        assert "ERROR" not in said and "TimeoutError" not in said, said
        # A run waits instead, and says once, at INFO, whose round it waits for.
        waiter = start(
            ["run", "--workspace", str(b), "--set", "campaign.rounds=1"], tmp_path / "bob.log",
            env_for("bob", **api),
        )  # fmt: skip
        deadline = time.monotonic() + 240
        while "waiting for the round" not in (tmp_path / "bob.log").read_text():
            assert time.monotonic() < deadline and waiter.poll() is None, (
                tmp_path / "bob.log"
            ).read_text()[-4000:]
            time.sleep(0.3)
        Path(f"{pause}.release").touch()
        finish(ann, tmp_path / "ann.log")
        finish(waiter, tmp_path / "bob.log")
    finally:
        for proc in (ann, waiter):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
    said = (tmp_path / "bob.log").read_text()
    waits = [line for line in said.splitlines() if "waiting for the round" in line]
    assert len(waits) == 1 and "INFO" in waits[0] and "held by ann (clone " in waits[0], said
    assert "ERROR" not in said and "TimeoutError" not in said, said
    rounds = 4
    args = ["run", "--set", f"campaign.rounds={rounds}"]
    procs = [
        (start([*args, "--workspace", str(a)], tmp_path / "ann2.log", env_for("ann", **api)),
         tmp_path / "ann2.log"),
        (start([*args, "--workspace", str(b)], tmp_path / "bob2.log", env_for("bob", **api)),
         tmp_path / "bob2.log"),
    ]  # fmt: skip
    try:
        for proc, log in procs:
            finish(proc, log)
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
    check_invariants([a, b], bare, params, rounds)
    assert not [r for r in round_runs(params) if TAG_DISCARDED in r.data.tags]


def test_a_limit_another_clone_created_first_is_used(tmp_path, shared, team_stack):
    """Clones started together both create the workspace's concurrency limit; the one whose
    create comes second gets 409. Here the other clone created it first: the run takes it as
    its own, exits 0 and leaves one parent run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from baldflow.flows.slots import limit_name

    bare, _, _, params = shared
    a, _ = make_clones(tmp_path, shared)
    name = limit_name(Workspace(a).workspace_id)
    with (
        temporary_settings({PREFECT_API_URL: team_stack.prefect_api_url}),
        get_client(sync_client=True) as client,
    ):
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    api = {"PREFECT_API_URL": team_stack.prefect_api_url}
    run(["run", "--workspace", str(a), "--set", "campaign.rounds=0"], tmp_path / "a.log",
        env_for("ann", **api))  # fmt: skip
    said = (tmp_path / "a.log").read_text()
    assert "Traceback" not in said and "ObjectAlreadyExists" not in said, said
    check_invariants([a], bare, params, 0)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=params["tracking"]["mlflow_uri"])
    experiment = client.get_experiment_by_name(params["tracking"]["experiment"])
    parents = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`baldflow.kind` = 'campaign'"
    )
    assert [r.info.status for r in parents] == ["FINISHED"]


# Clones of one process each, started on a barrier; attempts on fresh limits. With Prefect's
# upsert (read, then create) one attempt of 6 clones lost the race nearly every time here.
RACE_CLONES, RACE_ATTEMPTS = 6, 5


def test_clones_creating_the_workspace_limit_at_one_moment_all_use_it(team_stack, monkeypatch):
    """Several clones take a workspace's slot for the first time at the same moment, against
    the team's Prefect server: none fails on "already exists", and each holds the slot in turn."""
    import threading

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from baldflow.flows.slots import workspace_slot

    monkeypatch.setenv("PREFECT_API_URL", team_stack.prefect_api_url)
    failures: list[BaseException] = []
    held: list[str | None] = []
    inside = []
    for _ in range(RACE_ATTEMPTS):
        workspace_id = uuid.uuid4().hex
        barrier = threading.Barrier(RACE_CLONES)

        def clone(workspace_id=workspace_id, barrier=barrier) -> None:
            # Prefect's settings are per context, and a thread starts with none of its own.
            settings = temporary_settings({PREFECT_API_URL: team_stack.prefect_api_url})
            try:
                with settings:
                    barrier.wait(timeout=60)
                    with workspace_slot(workspace_id, shared=True, wait=True) as name:
                        inside.append(1)
                        assert len(inside) == 1, "two clones held one workspace's slot"
                        time.sleep(0.05)
                        inside.pop()
                        held.append(name)
            except BaseException as exc:  # noqa: BLE001 (reported below, whatever it is)
                failures.append(exc)

        threads = [threading.Thread(target=clone) for _ in range(RACE_CLONES)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in threads)
    assert failures == [], [f"{type(e).__name__}: {e}" for e in failures]
    assert len(held) == RACE_CLONES * RACE_ATTEMPTS and None not in held


def test_labels_imported_on_a_clone_are_pushed_and_name_the_operator(
    tmp_path, shared, prefect_harness, monkeypatch
):
    """Bob's clone hands the initial batch to people; his label import completes the round,
    pushes it, and Ann's clone, on its next run, has the round with labeled_by naming Bob."""
    import csv

    from baldflow.cli import main
    from baldflow.compute import campaign_data
    from baldflow.config import validate
    from baldflow.labeling import HandOff

    bare, dvc_remote, params_path, params = shared
    params = {**params, "oracle": {"kind": "file"}}
    params_path.write_text(yaml.safe_dump(params))
    a, b = tmp_path / "ann", tmp_path / "bob"
    with Workspace.init(a, params_text=params_path.read_text(), remote=str(dvc_remote)) as ws:
        remote.connect(ws, str(bare))
    remote.clone(str(bare), b).close()
    run_as("bob", b, params, 0)  # stops: the initial batch waits for labels
    pending = HandOff(Workspace(b).campaign_dir(CAMPAIGN), CAMPAIGN).pending()
    assert pending is not None and remote_tags(bare) == []
    data = campaign_data.prepare_data(validate(params))
    truth = dict(zip(data.splits.pool_ids, data.splits.pool_y.tolist(), strict=True))
    sheet = tmp_path / "labels.csv"
    with sheet.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample_id", "label"])
        writer.writerows([sid, truth[sid]] for sid in pending.sample_ids)
    monkeypatch.setenv("BALDFLOW_OPERATOR", "bob")
    # While another clone holds the workspace's round slot, the import stores the labels and
    # leaves the round to the next run (exit 3); nothing is pushed.
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency

    from baldflow.flows.slots import limit_name

    name = limit_name(Workspace(b).workspace_id)
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, 1)
    with concurrency(name, occupy=1, lease_duration=60):
        assert main(["label", "import", str(sheet), "-w", str(b)]) == 3
    assert remote_tags(bare) == []
    assert HandOff(Workspace(b).campaign_dir(CAMPAIGN), CAMPAIGN).is_complete(pending)
    run_as("bob", b, params, 0)  # the slot is free: the stored labels complete round 0
    assert remote_tags(bare) == [f"{CAMPAIGN}/round-0000"]
    run_as("ann", a, params, 0)  # nothing to compute: it only brings Ann's clone up to date
    rows = Workspace(a).ledger(CAMPAIGN)
    assert len(rows) == len(pending.sample_ids)
    assert {r.labeled_by for r in rows} == {"bob via labels.csv"}


def test_a_remote_that_does_not_answer_stops_the_run_before_any_work(tmp_path):
    from baldflow.preflight import PreflightError, check_git_remote

    bare = tmp_path / "shared.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    with Workspace.init(tmp_path / "ws") as ws:
        remote.connect(ws, str(bare))
    check_git_remote(tmp_path / "ws")  # answers: nothing to say
    bare.rename(tmp_path / "moved.git")
    with pytest.raises(PreflightError, match=r"git remote .*shared\.git does not answer"):
        check_git_remote(tmp_path / "ws")


def test_taking_the_remotes_rounds_keeps_a_local_edit_of_params(tmp_path, tiny_params):
    """Fast-forwarding a clone leaves the operator's uncommitted params.yaml edit alone."""
    from baldflow.config import dump_yaml, validate

    bare = tmp_path / "shared.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    text = dump_yaml(validate(tiny_params))
    with Workspace.init(tmp_path / "a", params_text=text) as ws:
        remote.connect(ws, str(bare))
    b = remote.clone(str(bare), tmp_path / "b")
    (tmp_path / "a" / "notes.txt").write_text("from a\n")
    git(tmp_path / "a", "add", "notes.txt")
    git(tmp_path / "a", "commit", "-q", "-m", "a note")
    git(tmp_path / "a", "push", "-q", "origin", "main")
    edited = text + "# my edit\n"
    b.params_path.write_text(edited)
    assert remote.sync(b).pulled
    assert (tmp_path / "b" / "notes.txt").read_text() == "from a\n"
    assert b.params_path.read_text() == edited
    b.close()
