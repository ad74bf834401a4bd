"""Every way out of a command, with real processes and real signals: Ctrl-C as a terminal sends
it (SIGINT to the process group), SIGTERM, a closed pipe, the temporary Prefect server killed
mid-round; `baldflow server` on another port and stopped; a finished campaign re-run.

The runs here use baldflow's own temporary Prefect server (no PREFECT_API_URL), since that is
what these ways out must stop; the resumes that only check the workspace use the session's
Prefect server. Whatever a test started is killed by PID if it fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from baldflow.faults import FAULT_ENV, FAULT_FILE_ENV
from baldflow.workspace import Workspace
from baldflow.workspace.ledger import read_ledger
from baldflow.workspace.tracking import local_tracking_uri

# Bounds on a busy 2-core machine. The interrupts must end within seconds: before the fix a
# Ctrl-C took about 2.5 minutes.
INTERRUPT_S = 15
START_S = 240
REPO = Path(__file__).resolve().parents[1]
# A closed stdout ends a command quietly: 128 + SIGPIPE from baldflow's own handling, 1 where
# rich met the closed pipe first (it handles that itself, with status 1).
QUIET_PIPE_STATUS = (f"status {128 + signal.SIGPIPE}", "status 1")


# ------------------------------------------------------------------ helpers
def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    # The workspace's own Prefect home, as for a user (the session's home is the harness's).
    env.pop("PREFECT_HOME", None)
    env.pop("PREFECT_API_URL", None)
    env.update(extra)
    return env


def start(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """`python -m baldflow.cli ARGV` in its own session and process group, like a job a shell
    started in the foreground: os.killpg(pid, SIGINT) is what Ctrl-C does to it."""
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "baldflow.cli", *argv],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def servers_of(home: Path) -> list[psutil.Process]:
    """Live Prefect server processes (ours or Prefect's own temporary one) using `home`."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get("PREFECT_HOME") != str(home):
                continue
            cmdline = " ".join(proc.cmdline())
            if "prefect" in cmdline and ("server" in cmdline or "uvicorn" in cmdline):
                found.append(proc)
    return found


def cleanup(proc: subprocess.Popen, home: Path | None) -> None:
    """Kill by PID what a failed test left: the command's process group, then its servers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    for server in servers_of(home) if home is not None else []:
        with contextlib.suppress(psutil.Error):
            server.kill()


def wait_for(path: Path, proc: subprocess.Popen, log: Path, timeout: float = START_S) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"process ended early ({proc.returncode}):\n{log.read_text()}")
        assert time.monotonic() < deadline, f"pause point never reached:\n{log.read_text()}"
        time.sleep(0.1)


def ended_within(proc: subprocess.Popen, seconds: float, log: Path) -> float:
    started = time.monotonic()
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired as exc:
        tail = log.read_text()[-3000:]
        raise AssertionError(f"still running {seconds} s later:\n{tail}") from exc
    return time.monotonic() - started


def write_params(tmp_path: Path, tiny_params: dict, rounds: int) -> Path:
    tiny_params["campaign"]["rounds"] = rounds
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_params))
    return path


def flow_runs_recorded(workspace: Path) -> int:
    db = workspace / ".prefect" / "prefect.db"
    if not db.exists():
        return 0
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT count(*) FROM flow_run").fetchone()[0]


def mlflow_rounds(workspace: Path) -> dict[int, object]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=local_tracking_uri(workspace / "mlflow"))
    experiment = client.get_experiment_by_name("baldflow")
    runs = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`baldflow.kind` = 'round'"
    )
    return {int(r.data.tags["baldflow.round"]): r for r in runs}


def interrupted_mid_round(tmp_path, tiny_params, send) -> tuple[subprocess.Popen, Path, str]:
    """A run paused inside round 2's training, then `send(proc)`; returns it once it ended."""
    workspace = tmp_path / "ws"
    params = write_params(tmp_path, tiny_params, rounds=4)
    marker, log = tmp_path / "paused", tmp_path / "run.log"
    env = cli_env(**{FAULT_ENV: "train:after:2:pause", FAULT_FILE_ENV: str(marker)})
    proc = start(["run", "-w", str(workspace), "-c", str(params)], log, env)
    home = workspace / ".prefect"
    try:
        wait_for(marker, proc, log)
        (server,) = servers_of(home)
        send(proc)
        took = ended_within(proc, INTERRUPT_S, log)
        print(f"ended {took:.1f} s after the signal")
        with contextlib.suppress(psutil.TimeoutExpired):
            server.wait(timeout=5)
        assert not server.is_running() or server.status() == psutil.STATUS_ZOMBIE
        assert servers_of(home) == []
    finally:
        cleanup(proc, home)
    return proc, workspace, log.read_text()


def resume_loses_nothing(workspace: Path, tmp_path: Path, api: str) -> None:
    """The next run (on the session's server) finishes the campaign from where it stood."""
    result = subprocess.run(
        [sys.executable, "-m", "baldflow.cli", "run", "-w", str(workspace)]
        + ["-c", str(tmp_path / "params.yaml")],
        env=cli_env(PREFECT_API_URL=api),
        capture_output=True,
        text=True,
        timeout=START_S,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # With an API configured, baldflow starts no server of its own.
    assert "temporary Prefect server" not in result.stdout + result.stderr
    ws = Workspace(workspace)
    assert ws.completed_rounds("tiny") == [0, 1, 2, 3, 4]
    ids = [r.sample_id for r in read_ledger(ws.ledger_path("tiny"))]
    assert len(ids) == len(set(ids)) == 10 + 4 * 5


# ------------------------------------------------------------------ Ctrl-C and SIGTERM
def test_ctrl_c_mid_round_is_back_in_seconds_with_one_line(tmp_path, tiny_params, prefect_harness):
    proc, workspace, out = interrupted_mid_round(
        tmp_path, tiny_params, lambda p: os.killpg(p.pid, signal.SIGINT)
    )
    assert proc.returncode == 130, out
    assert "Traceback" not in out
    last = out.strip().splitlines()[-1]
    assert last == (
        "baldflow: campaign 'tiny' stopped during round 2; round 1 is the last completed; "
        "run again to resume"
    ), out
    # As after a SIGKILL: the rounds committed before stay, the next run resumes.
    assert Workspace(workspace).completed_rounds("tiny") == [0, 1]
    resume_loses_nothing(workspace, tmp_path, prefect_harness)


def test_sigterm_mid_round_stops_the_server_it_started(tmp_path, tiny_params, prefect_harness):
    proc, workspace, out = interrupted_mid_round(
        tmp_path, tiny_params, lambda p: p.send_signal(signal.SIGTERM)
    )
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "Traceback" not in out
    assert (
        out.strip()
        .splitlines()[-1]
        .startswith(
            "baldflow: campaign 'tiny' stopped during round 2; round 1 is the last completed"
        )
    ), out
    assert Workspace(workspace).completed_rounds("tiny") == [0, 1]


def test_ctrl_c_mid_round_prints_only_its_line_and_the_ui_keeps_the_crash(tmp_path, tiny_params):
    """Prefect's "Crash detected!" and "Finished in state Crashed" lines stay off the terminal
    after a Ctrl-C (stdout and stderr apart, as a terminal shows them); the flow run's logs in
    the Prefect server still have them."""
    workspace = tmp_path / "ws"
    params = write_params(tmp_path, tiny_params, rounds=4)
    marker, out_path, err_path = tmp_path / "paused", tmp_path / "out", tmp_path / "err"
    env = cli_env(**{FAULT_ENV: "train:after:2:pause", FAULT_FILE_ENV: str(marker)})
    with out_path.open("w") as out, err_path.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "baldflow.cli", "run", "-w", str(workspace), "-c", str(params)],
            env=env, stdout=out, stderr=err, start_new_session=True,
        )  # fmt: skip
    home = workspace / ".prefect"
    try:
        wait_for(marker, proc, err_path)
        before = out_path.stat().st_size, err_path.stat().st_size
        os.killpg(proc.pid, signal.SIGINT)
        ended_within(proc, INTERRUPT_S, err_path)
    finally:
        cleanup(proc, home)
    stdout, stderr = out_path.read_text(), err_path.read_text()
    assert proc.returncode == 130, stdout + stderr
    assert stdout[before[0] :] == "", stdout
    assert stderr[before[1] :] == (
        "baldflow: campaign 'tiny' stopped during round 2; round 1 is the last completed; "
        "run again to resume\n"
    ), stderr
    with contextlib.closing(sqlite3.connect(home / "prefect.db")) as conn:
        kept = conn.execute(
            "SELECT count(*) FROM log WHERE message LIKE 'Crash detected!%interrupt signal.'"
        ).fetchone()[0]
    assert kept >= 1  # the task's and the flow's, as the UI shows them


def test_a_second_ctrl_c_exits_at_once_and_a_stuck_way_out_has_a_deadline(tmp_path):
    """The deadline and the second signal, on a command whose cleanup never ends."""
    script = tmp_path / "stuck.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, time
            from baldflow.stack.interrupts import InterruptHandler
            with InterruptHandler(grace_seconds=float(sys.argv[1]), describe=lambda: "where") as h:
                try:
                    print("ready", flush=True)
                    time.sleep(600)
                finally:
                    print("cleaning", flush=True)
                    time.sleep(600)  # a cleanup that hangs, like a client retrying a dead server
            """
        )
    )
    for grace, signals in ((3.0, 1), (60.0, 2)):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(grace)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            assert proc.stdout.readline().strip() == "ready"
            started = time.monotonic()
            os.killpg(proc.pid, signal.SIGINT)
            # The second Ctrl-C comes once the first has reached the cleanup, as a person's
            # would: two signals sent before a busy machine schedules the process arrive as one.
            assert proc.stdout.readline().strip() == "cleaning"
            if signals == 2:
                os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=grace + 10 if signals == 1 else 10)
            took = time.monotonic() - started
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        assert proc.returncode == 130
        assert proc.stderr.read().strip() == "baldflow: where"
        assert took < (grace + 5 if signals == 1 else 5)


# ------------------------------------------------------------------ closed pipes
def test_a_closed_pipe_is_quiet_and_leaves_no_server(tmp_path, tiny_params):
    workspace = tmp_path / "ws"
    params = write_params(tmp_path, tiny_params, rounds=2)
    home = workspace / ".prefect"
    cli = f"{sys.executable} -m baldflow.cli"
    try:
        # `head` leaves after the first two lines; the table at the end meets a closed pipe
        # while the run's server still runs. (Prefect's logs go to stderr.)
        run = subprocess.run(
            f'{cli} run -w {workspace} -c {params} | head -n 2; echo "status ${{PIPESTATUS[0]}}"',
            shell=True,
            executable="/bin/bash",
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=START_S,
        )
        assert "Traceback" not in run.stderr and "BrokenPipe" not in run.stderr, run.stderr
        assert run.stdout.strip().splitlines()[-1] in QUIET_PIPE_STATUS, run.stdout
        assert Workspace(workspace).completed_rounds("tiny") == [0, 1, 2]
        assert servers_of(home) == []
        for command in (
            f"diff -w {workspace} --from 0 --to 2",
            f"diff -w {workspace} --from 0 --to 2 --format csv",
            f"history -w {workspace}",
        ):
            piped = subprocess.run(
                f'{cli} {command} | head -n 0; echo "status ${{PIPESTATUS[0]}}"',
                shell=True,
                executable="/bin/bash",
                env=cli_env(),
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert piped.stderr == "", (command, piped.stderr)
            assert piped.stdout.strip() in QUIET_PIPE_STATUS, command
    finally:
        for server in servers_of(home):
            server.kill()


# ------------------------------------------------------------------ the server dies mid-round
def test_a_dead_server_ends_the_run_in_one_line_and_the_next_run_repairs(tmp_path, tiny_params):
    workspace = tmp_path / "ws"
    params = write_params(tmp_path, tiny_params, rounds=3)
    marker, log = tmp_path / "paused", tmp_path / "run.log"
    home = workspace / ".prefect"
    # Round 2 is committed and tagged, its MLflow run not yet complete.
    env = cli_env(**{FAULT_ENV: "track-round:before:2:pause", FAULT_FILE_ENV: str(marker)})
    proc = start(["run", "-w", str(workspace), "-c", str(params)], log, env)
    try:
        wait_for(marker, proc, log)
        (server,) = servers_of(home)
        # Killed while the run is inside round 2's tracking (still paused there): the run
        # learns it from its watcher, not from minutes of retries.
        server.kill()
        ended_within(proc, INTERRUPT_S, log)
    finally:
        cleanup(proc, home)
    out = log.read_text()
    assert proc.returncode == 1, out
    assert "Traceback" not in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("baldflow: the temporary Prefect server on http://127.0.0.1:"), out
    assert "stopped unexpectedly" in last
    assert last.endswith(
        "campaign 'tiny' stopped during round 3; round 2 is the last completed; run again to resume"
    ), out
    assert Workspace(workspace).completed_rounds("tiny") == [0, 1, 2]
    assert mlflow_rounds(workspace)[2].info.status != "FINISHED"

    # The next run completes round 2's tracking from git, says so, and goes on.
    rerun = subprocess.run(
        [sys.executable, "-m", "baldflow.cli", "run", "-w", str(workspace), "-c", str(params)],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=START_S,
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "completed the MLflow runs of 1 committed round(s) from git" in rerun.stderr + (
        rerun.stdout
    )
    runs = mlflow_rounds(workspace)
    assert runs[2].info.status == "FINISHED"
    assert runs[2].data.tags["baldflow.tracking"] == "repaired from git"
    assert {"test_accuracy", "labeled_size"} <= set(runs[2].data.metrics)
    assert Workspace(workspace).completed_rounds("tiny") == [0, 1, 2, 3]
    assert servers_of(home) == []


# ------------------------------------------------------------------ a finished campaign
def test_a_finished_campaign_answers_from_the_workspace_and_records_nothing(
    tmp_path, tiny_params, prefect_harness
):
    workspace = tmp_path / "ws"
    params = write_params(tmp_path, tiny_params, rounds=2)
    api_env = cli_env(PREFECT_API_URL=prefect_harness)
    argv = ["-w", str(workspace), "-c", str(params)]
    first = subprocess.run(
        [sys.executable, "-m", "baldflow.cli", "run", *argv],
        env=api_env,
        capture_output=True,
        text=True,
        timeout=START_S,
    )
    assert first.returncode == 0, first.stdout + first.stderr
    runs_before = {r.info.run_id: r.info.status for r in mlflow_rounds(workspace).values()}
    for command in ("run", "cycle"):
        started = time.monotonic()
        again = subprocess.run(
            [sys.executable, "-m", "baldflow.cli", command, *argv],
            env=cli_env(),  # no API configured: a server would have to be started
            capture_output=True,
            text=True,
            timeout=120,
        )
        took = time.monotonic() - started
        print(f"{command} of a finished campaign: {took:.1f} s")
        assert again.returncode == 0, again.stdout + again.stderr
        assert "nothing was run or recorded" in again.stdout
        assert "Prefect server" not in again.stdout + again.stderr
        assert took < 20
        if command == "run":
            assert "│     2 │" in again.stdout  # the table, read from rounds.csv
            # Bookkeeping seconds of rounds run earlier come from their MLflow runs, not "-".
            rows = [line for line in again.stdout.splitlines() if line.startswith("│     ")]
            assert [row.rstrip(" │").split()[-1] != "-" for row in rows] == [False, True, True]
    assert flow_runs_recorded(workspace) == 0
    assert {r.info.run_id: r.info.status for r in mlflow_rounds(workspace).values()} == (
        runs_before
    )

    # Tracking that a stopped run left incomplete is not "finished": the flow repairs it.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=local_tracking_uri(workspace / "mlflow"))
    client.set_terminated(mlflow_rounds(workspace)[2].info.run_id, status="KILLED")
    repaired = subprocess.run(
        [sys.executable, "-m", "baldflow.cli", "run", *argv],
        env=api_env,
        capture_output=True,
        text=True,
        timeout=START_S,
    )
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "completed the MLflow runs of 1 committed round(s) from git" in (
        repaired.stdout + repaired.stderr
    )
    assert mlflow_rounds(workspace)[2].info.status == "FINISHED"


# ------------------------------------------------------------------ baldflow server
def healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_server_ui_talks_to_its_own_port_and_stops_with_baldflow(tmp_path):
    workspace = tmp_path / "ws"
    home = workspace / ".prefect"
    for stop in ("SIGTERM", "SIGINT to the group"):
        port = free_port()
        log = tmp_path / f"server-{port}.log"
        # A shell that exported another server's URL must not change where this UI points.
        env = cli_env(PREFECT_API_URL="http://127.0.0.1:4200/api")
        proc = start(["server", "-w", str(workspace), "--port", str(port)], log, env)
        try:
            deadline = time.monotonic() + START_S
            while not healthy(f"http://127.0.0.1:{port}/api/health"):
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            settings = httpx.get(f"http://127.0.0.1:{port}/ui-settings", timeout=10).json()
            assert settings["api_url"] == f"http://127.0.0.1:{port}/api"
            (server,) = servers_of(home)
            if stop == "SIGTERM":
                proc.send_signal(signal.SIGTERM)
            else:
                os.killpg(proc.pid, signal.SIGINT)
            ended_within(proc, INTERRUPT_S, log)
            expected = 128 + (signal.SIGTERM if stop == "SIGTERM" else signal.SIGINT)
            assert proc.returncode == expected, log.read_text()
            with contextlib.suppress(psutil.TimeoutExpired):
                server.wait(timeout=5)
            assert servers_of(home) == []
            assert "Traceback" not in log.read_text()
        finally:
            cleanup(proc, home)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal")
def test_a_server_outlives_no_sigkilled_owner(tmp_path):
    """The one way out an owner cannot handle: SIGKILL. The kernel stops its server then."""
    script = tmp_path / "owner.py"
    home = tmp_path / "home"
    script.write_text(
        textwrap.dedent(
            f"""
            import time
            from baldflow.stack.prefect_server import PrefectServer
            server = PrefectServer({str(home)!r}, temporary=True).start()
            print(server.process.pid, flush=True)
            time.sleep(600)
            """
        )
    )
    owner = subprocess.Popen(
        [sys.executable, str(script)], env=cli_env(), stdout=subprocess.PIPE, text=True
    )
    try:
        pid = int(owner.stdout.readline())
        server = psutil.Process(pid)
        owner.kill()
        owner.wait()
        server.wait(timeout=INTERRUPT_S)
    finally:
        if owner.poll() is None:
            owner.kill()
        for left in servers_of(home):
            left.kill()
