"""Supervision of the team stack's servers: `stack status` tells a healthy server from its
orphaned workers (the recorded process killed, its children still serving the port), from a
port held by an unrelated process and from nothing running; `up` and `down` stop orphans by
their recorded process group, never by name."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from baldflow.stack.process import (
    ManagedProcess,
    group_members,
    port_holders,
    start_ticks,
)
from baldflow.stack.team import StackError, stack_down, stack_status, stack_up

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _wait(condition, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _row(root: Path, part: str) -> tuple[bool, str]:
    return {name: (ok, detail) for name, ok, detail in stack_status(root)}[part]


def _health(url: str) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as response:
        return response.status


def test_a_killed_mlflow_master_is_reported_and_up_restarts_it(team_stack):
    """kill -9 of the recorded MLflow PID only: uvicorn and its workers, in its process group,
    keep serving. Status says so; `up` stops that group and starts MLflow on its port again."""
    root = team_stack.dir
    state = json.loads((root / "stack.json").read_text())
    recorded = state["mlflow"]
    pid, port = recorded["pid"], recorded["port"]
    members = group_members(pid, recorded["start_ticks"], recorded.get("token"))
    assert pid in members and len(members) > 1, members  # the leader and its uvicorn workers
    try:
        os.kill(pid, signal.SIGKILL)
        _wait(lambda: start_ticks(pid) is None)
        workers = group_members(pid, recorded["start_ticks"], recorded.get("token"))
        assert workers and pid not in workers
        assert _health(f"{team_stack.mlflow_uri}/health") == 200  # still served, unsupervised

        ok, detail = _row(root, "mlflow")
        assert not ok
        assert f"orphaned workers of pid {pid} hold port {port}" in detail, detail
        assert "HTTP 200" in detail and "stack up" in detail

        said: list[str] = []
        again = stack_up(root, report=said.append)
        assert any("stopped its orphaned workers" in line for line in said), said
        assert again.mlflow_port == port and again.mlflow_uri == team_stack.mlflow_uri
        assert group_members(pid, recorded["start_ticks"], recorded.get("token")) == []
        new = json.loads((root / "stack.json").read_text())["mlflow"]
        assert new["pid"] != pid and new["token"] != recorded.get("token")
        assert _row(root, "mlflow")[0], _row(root, "mlflow")
        assert set(port_holders(port)[1]) <= set(
            group_members(new["pid"], new["start_ticks"], new["token"])
        )
    finally:
        stack_up(root)  # the session's stack goes on whole, whatever failed above


# A stand-in server: a leader whose command line says "mlflow server" starts a child that
# answers HTTP on the port (uvicorn's role: 501 to GET), in the leader's group and session.
_LEADER = textwrap.dedent(
    """
    import subprocess, sys, time
    child = '''
    import http.server, sys
    from http.server import BaseHTTPRequestHandler as Handler
    server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    open(sys.argv[2], "w").close()
    server.serve_forever()
    '''
    subprocess.Popen([sys.executable, "-c", child, sys.argv[1], sys.argv[2]])
    time.sleep(120)
    """
)


def _stand_in_stack(root: Path, port: int, ready: Path) -> ManagedProcess:
    """A stack directory whose recorded MLflow server is the stand-in (no PostgreSQL, no
    Prefect): what `up` records, pid, group, start time, port and token."""
    leader = ManagedProcess(
        "stand-in", [sys.executable, "-c", _LEADER, str(port), str(ready), "mlflow server"],
        detached=True,
    ).start()
    _wait(ready.exists)
    pid = leader.pid
    state = {
        "kind": "baldflow-team-stack",
        "version": 1,
        "mlflow": {"pid": pid, "pgid": pid, "start_ticks": start_ticks(pid), "port": port,
                   "token": leader.token, "url": f"http://127.0.0.1:{port}"},
        "prefect": {},
    }
    (root / "stack.json").write_text(json.dumps(state))
    return leader


def test_down_stops_orphaned_workers_and_spares_an_unrelated_holder(tmp_path):
    port = _free_port()
    leader = _stand_in_stack(tmp_path, port, tmp_path / "ready")
    pid = leader.pid
    try:
        assert _row(tmp_path, "mlflow")[1].startswith("http://127.0.0.1:")  # alive: its URL
        os.kill(pid, signal.SIGKILL)
        _wait(lambda: leader.process.poll() is not None)
        listening, holders = port_holders(port)
        assert listening and holders and pid not in holders
        ok, detail = _row(tmp_path, "mlflow")
        assert not ok and f"orphaned workers of pid {pid} hold port {port}" in detail, detail

        said: list[str] = []
        assert stack_down(tmp_path, report=said.append) == ["mlflow"]
        assert any(f"recorded pid {pid} was gone; stopped its orphaned workers" in line
                   and f"held port {port}" in line for line in said), said
        _wait(lambda: not port_holders(port)[0])
        assert all(start_ticks(p) is None for p in holders)
        with pytest.raises(StackError, match="no server"):
            stack_down(tmp_path)
    finally:
        leader.kill_now()

    # Someone else's listener on the recorded port: named as unrelated, and never signalled.
    state = json.loads((tmp_path / "stack.json").read_text())
    state["mlflow"].update(pid=pid, pgid=pid, start_ticks=1, token="recorded")
    (tmp_path / "stack.json").write_text(json.dumps(state))
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the probes' TIME_WAIT
        sock.bind(("127.0.0.1", port))
        sock.listen()
        ok, detail = _row(tmp_path, "mlflow")
        assert not ok
        assert f"port {port} is held by an unrelated process (pid {os.getpid()}" in detail, detail
        with contextlib.suppress(StackError):
            stack_down(tmp_path)
        assert port_holders(port) == (True, [os.getpid()])
    ok, detail = _row(tmp_path, "mlflow")
    assert not ok and detail.startswith("not running (http://127.0.0.1:"), detail


def test_group_members_spare_a_reused_pid_and_other_tokens():
    """A leader with another start time is a reused PID; a member without the recorded token
    is not the recorded server's: neither is a member, so neither is ever signalled."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True,
        env={**os.environ, "BALDFLOW_PROCESS_TOKEN": "abc"},
    )
    try:
        ticks = start_ticks(proc.pid)
        assert group_members(proc.pid, ticks, "abc") == [proc.pid]
        assert group_members(proc.pid, ticks) == [proc.pid]
        assert group_members(proc.pid, ticks + 1, "abc") == []
        assert group_members(proc.pid, ticks, "other") == []
        assert group_members(proc.pid, ticks - 1, "abc") == []  # leader alive, ticks differ
    finally:
        proc.kill()
        proc.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

