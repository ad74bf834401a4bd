"""The team stack (`baldflow stack up|status|down`): PostgreSQL, MLflow and Prefect servers on
it, the remotes; real clients against real servers, the one-command CLI path, basic auth."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from baldflow.stack import postgres
from baldflow.stack.process import command_line, start_ticks, stop_recorded_group
from baldflow.stack.team import NotAStackError, StackError, stack_down, stack_status, stack_up

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "baldflow.cli", "stack", *args],
        capture_output=True, text=True, timeout=timeout,
    )


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _http(url: str, *, data: dict | None = None, user: tuple[str, str] | None = None):
    request = urllib.request.Request(url, data=json.dumps(data).encode() if data else None)
    request.add_header("Content-Type", "application/json")
    if user is not None:
        token = base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


# -- the session's stack ---------------------------------------------------------------------


def test_status_reports_every_part_healthy(team_stack):
    rows = stack_status(team_stack.dir)
    assert [part for part, _, _ in rows] == ["postgres", "mlflow", "prefect", "git", "dvc"]
    assert all(ok for _, ok, _ in rows), rows
    # The timings of the start are recorded for the team's reports.
    state = json.loads((team_stack.dir / "stack.json").read_text())
    assert {"postgres_s", "mlflow_s", "prefect_s"} <= set(state["timings"])


def test_secrets_stay_in_private_files(team_stack):
    password = (team_stack.dir / "postgres" / "password").read_text().strip()
    assert len(password) >= 20
    assert password not in (team_stack.dir / "stack.json").read_text()
    env_file = team_stack.dir / "team.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert password not in env_file.read_text()
    assert f"export MLFLOW_TRACKING_URI={team_stack.mlflow_uri}" in env_file.read_text()
    assert stat.S_IMODE((team_stack.dir / "postgres" / "password").stat().st_mode) == 0o600
    assert password in team_stack.postgres_url("mlflow", "psycopg2")


def test_up_again_keeps_what_runs(team_stack):
    again = stack_up(team_stack.dir)
    assert again.already_up
    assert (again.mlflow_uri, again.prefect_api_url) == (
        team_stack.mlflow_uri, team_stack.prefect_api_url
    )
    with pytest.raises(StackError, match="runs on port"):
        stack_up(team_stack.dir, mlflow_port=team_stack.mlflow_port + 1)


def test_mlflow_client_logs_a_run_and_artifact_through_the_server(team_stack, tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=team_stack.mlflow_uri)
    experiment = client.create_experiment(f"stack-{time.time_ns()}")
    run = client.create_run(experiment)
    client.log_param(run.info.run_id, "strategy", "power-bald")
    client.log_metric(run.info.run_id, "accuracy", 0.75)
    artifact = tmp_path / "ledger.csv"
    artifact.write_text("sample_id,label\n3,7\n")
    client.log_artifact(run.info.run_id, str(artifact))
    client.set_terminated(run.info.run_id)

    read = client.get_run(run.info.run_id)
    assert read.data.params == {"strategy": "power-bald"}
    assert read.data.metrics == {"accuracy": 0.75}
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied, no storage creds
    back = client.download_artifacts(run.info.run_id, "ledger.csv", str(tmp_path / "back"))
    assert Path(back).read_text() == artifact.read_text()
    stored = list((team_stack.dir / "mlflow-artifacts").rglob("ledger.csv"))
    assert len(stored) == 1


def test_prefect_flow_runs_on_the_postgres_backed_server(team_stack, tmp_path):
    script = textwrap.dedent(
        """
        from prefect import flow, task

        @task
        def double(x):
            return 2 * x

        @flow(name="stack-check")
        def check():
            return double(21)

        state = check(return_state=True)
        print(state.type.value, state.result(), state.state_details.flow_run_id)
        """
    )
    env = dict(os.environ, PREFECT_API_URL=team_stack.prefect_api_url,
               PREFECT_HOME=str(tmp_path / "prefect-home"))
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    kind, value, run_id = result.stdout.split()[-3:]
    assert (kind, value) == ("COMPLETED", "42")
    # The server (and so PostgreSQL) has it, not some temporary server of the subprocess.
    status, body = _http(f"{team_stack.prefect_api_url}/flow_runs/{run_id}")
    assert status == 200 and body["state_type"] == "COMPLETED"
    with postgres.PostgresCluster(team_stack.dir / "postgres", team_stack.postgres_port).connect(
        "prefect"
    ) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM flow_run WHERE id = %s", (run_id,))
        assert cur.fetchone()[0] == 1


def test_remotes_exist(team_stack):
    assert (Path(team_stack.git_remote) / "HEAD").is_file()
    bare = subprocess.run(
        ["git", "-C", team_stack.git_remote, "rev-parse", "--is-bare-repository"],
        capture_output=True, text=True,
    )
    assert bare.stdout.strip() == "true"
    assert Path(team_stack.dvc_remote).is_dir()


# -- the one-command CLI path, on a stack of its own ------------------------------------------


def test_cli_up_status_down_stops_everything():
    root = Path(tempfile.mkdtemp(prefix="baldflow-test-cli-stack-"))
    try:
        up = _cli("up", "--dir", str(root))
        assert up.returncode == 0, up.stderr
        assert "MLflow server ready" in up.stdout and "Prefect server ready" in up.stdout
        state = json.loads((root / "stack.json").read_text())
        pids = [state["mlflow"]["pid"], state["prefect"]["pid"], state["postgres"]["pid"]]
        ports = [state[p]["port"] for p in ("mlflow", "prefect", "postgres")]
        # The servers outlived the `up` process.
        assert all(start_ticks(pid) is not None for pid in pids)
        assert all(_listening(port) for port in ports)
        status = _cli("status", "--dir", str(root))
        assert status.returncode == 0, status.stdout + status.stderr

        down = _cli("down", "--dir", str(root))
        assert down.returncode == 0, down.stderr
        deadline = time.monotonic() + 10
        while any(start_ticks(pid) is not None for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [pid for pid in pids if start_ticks(pid) is not None] == []
        assert [port for port in ports if _listening(port)] == []

        again = _cli("down", "--dir", str(root))
        assert again.returncode == 1 and "no server" in again.stderr
        status = _cli("status", "--dir", str(root))
        assert status.returncode == 1 and "DOWN" in status.stdout

        # Back up on the recorded ports: the URLs in members' team.env keep working.
        env_before = (root / "team.env").read_text()
        restarted = stack_up(root)
        assert (root / "team.env").read_text() == env_before
        assert all(ok for _, ok, _ in stack_status(root))
        assert restarted.mlflow_port == ports[0]
        stack_down(root)
    finally:
        if (root / "stack.json").exists():
            with contextlib.suppress(StackError):
                stack_down(root)
        shutil.rmtree(root, ignore_errors=True)


def test_stop_by_recorded_pid_spares_a_reused_pid():
    proc = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        ticks = start_ticks(proc.pid)
        # Another start time, or another command line: not the process recorded, left alone.
        assert not stop_recorded_group(proc.pid, ticks + 1, "sleep")
        assert not stop_recorded_group(proc.pid, ticks, "mlflow server")
        assert proc.poll() is None
        assert stop_recorded_group(proc.pid, ticks, "sleep 30", timeout=5), (
            start_ticks(proc.pid), ticks, command_line(proc.pid), proc.poll()
        )
        assert proc.wait(timeout=5) is not None
        assert not stop_recorded_group(proc.pid, ticks, "sleep 30")  # gone: tolerated
    finally:
        proc.kill()
        proc.wait()


# -- clear errors --------------------------------------------------------------------------


def test_a_directory_that_is_not_a_stack(tmp_path):
    with pytest.raises(NotAStackError, match="not a baldflow stack"):
        stack_status(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(NotAStackError, match="not empty"):
        stack_up(tmp_path)
    result = _cli("down", "--dir", str(tmp_path))
    assert result.returncode == 1 and "not a baldflow stack" in result.stderr


def test_a_port_already_taken(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(StackError, match=f"port {port} on 127.0.0.1 is taken"):
            stack_up(tmp_path / "stack", postgres_port=port)


def test_postgres_binaries_missing_says_how_to_install(monkeypatch):
    monkeypatch.setattr(postgres.shutil, "which", lambda name: None)
    monkeypatch.setattr(postgres.glob, "glob", lambda pattern: [])
    with pytest.raises(postgres.PostgresNotInstalledError, match="apt-get install -y postgresql"):
        postgres.find_bindir()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as another user")
def test_a_directory_the_postgres_user_cannot_enter():
    blocked = Path(tempfile.mkdtemp(prefix="baldflow-test-private-"))  # mode 0700
    try:
        with pytest.raises(postgres.PostgresError, match=f"cannot enter {blocked} "):
            stack_up(blocked / "stack")
    finally:
        shutil.rmtree(blocked, ignore_errors=True)


# -- basic auth ----------------------------------------------------------------------------


def test_basic_auth_refuses_strangers_and_other_users_experiments(team_mlflow_auth, monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from baldflow.stack.mlflow_server import create_user

    uri, admin, admin_password = team_mlflow_auth
    search = f"{uri}/api/2.0/mlflow/experiments/search"
    status, _ = _http(search, data={"max_results": 1})
    assert status == 401
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    with pytest.raises(MlflowException, match="401|[Uu]nauthori"):
        MlflowClient(tracking_uri=uri).search_experiments()

    suffix = time.time_ns()
    alice, bob = f"alice{suffix}", f"bob{suffix}"
    create_user(uri, admin, admin_password, alice, "alice-password-1")
    create_user(uri, admin, admin_password, bob, "bob-password-12")

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", alice)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "alice-password-1")
    experiment = MlflowClient(tracking_uri=uri).create_experiment(f"alice-{suffix}")

    status, body = _http(
        f"{uri}/api/2.0/mlflow/runs/create",
        data={"experiment_id": experiment},
        user=(bob, "bob-password-12"),
    )
    assert status == 403, body
    status, _ = _http(
        f"{uri}/api/2.0/mlflow/runs/create",
        data={"experiment_id": experiment},
        user=(alice, "alice-password-1"),
    )
    assert status == 200
