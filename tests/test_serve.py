"""Scheduled cycles: a real `prefect server start` on loopback, `baldflow serve` on a short
interval, and rounds that complete, commit and tag on their own. Everything is torn down by
process group, on failure too.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from baldflow.cli import main
from baldflow.stack.process import free_port, stop_process_group
from baldflow.workspace import Workspace
from baldflow.workspace.ledger import read_ledger

# Bounds for the slow parts on a busy 2-core machine.
SERVER_START_S = 150
ROUNDS_S = 240


def wait_healthy(api: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"prefect server exited:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise AssertionError(f"prefect server not healthy after {SERVER_START_S} s")


def cycle_runs(api: str) -> list[dict]:
    response = httpx.post(
        f"{api}/flow_runs/filter",
        json={"flows": {"name": {"any_": ["baldflow-cycle"]}}, "limit": 200, "offset": 0},
        timeout=10,
    )
    response.raise_for_status()
    return response.json()


def test_serve_runs_scheduled_cycles_one_round_each(tmp_path, tiny_params):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ)
    env.update(
        {
            "PREFECT_HOME": str(tmp_path / "prefect-home"),
            "PREFECT_API_URL": api,
            # Defaults suit hourly schedules: the scheduler looks every 60 s and the runner
            # polls every 10 s. A test of a 2-second interval needs both faster.
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "1",
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "PREFECT_LOGGING_LEVEL": "WARNING",
        }
    )
    workspace = tmp_path / "ws"
    tiny_params["campaign"]["rounds"] = 20
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_params))
    assert main(["init", str(workspace), "--config", str(params_file)]) == 0

    server_log = tmp_path / "server.log"
    serve_log = tmp_path / "serve.log"
    procs: list[subprocess.Popen] = []
    try:
        with server_log.open("w") as out:
            server = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start"]
                + ["--host", "127.0.0.1", "--port", str(port)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        procs.append(server)
        wait_healthy(api, server, server_log)
        with serve_log.open("w") as out:
            serve = subprocess.Popen(
                [sys.executable, "-m", "baldflow.cli", "serve", "-w", str(workspace)]
                + ["--interval", "2"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        procs.append(serve)
        ws = Workspace(workspace)
        deadline = time.monotonic() + ROUNDS_S
        while len(ws.completed_rounds("tiny")) < 2:
            if serve.poll() is not None:
                raise AssertionError(f"baldflow serve exited:\n{serve_log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"rounds done: {ws.completed_rounds('tiny')} after {ROUNDS_S} s\n"
                    + serve_log.read_text()[-3000:]
                )
            time.sleep(1)
        runs = cycle_runs(api)
    finally:
        for proc in reversed(procs):
            stop_process_group(proc)

    # Round 0, then one acquisition round per cycle, each committed and tagged in order.
    rounds = ws.completed_rounds("tiny")
    assert rounds[:2] == [0, 1]
    ledger = read_ledger(ws.ledger_path("tiny"))
    for round_index in rounds:
        tag = f"tiny/round-{round_index:04d}"
        message = ws.git("log", "-1", "--format=%B", tag)
        assert f"Baldflow-Round: {round_index}" in message
        assert sum(r.round == round_index for r in ledger) == (10 if round_index == 0 else 5)
    assert len({r.sample_id for r in ledger}) == len(ledger)
    # Every committed round came from its own flow run of the served deployment.
    completed = [r for r in runs if r["state_type"] == "COMPLETED" and r["deployment_id"]]
    by_run = {r.prefect_flow_run_id for r in ledger}
    assert len(by_run) >= 2
    assert by_run <= {r["id"] for r in runs}
    assert len(completed) >= 1


def test_a_cycle_on_a_busy_workspace_is_skipped(tmp_path, tiny_params, prefect_harness):
    from baldflow.flows.cycle import cycle_flow

    workspace = tmp_path / "ws"
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_params))
    assert main(["init", str(workspace), "--config", str(params_file)]) == 0
    # The lock is re-entrant within a process, so another process must hold it.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\nfrom baldflow.workspace import workspace_lock\n"
            f"with workspace_lock({str(workspace)!r}):\n"
            "    print('held', flush=True)\n    sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        state = cycle_flow(workspace=str(workspace), return_state=True)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert state.is_completed() and state.name == "Skipped"
    assert "in use by pid" in state.message
    assert Workspace(workspace).completed_rounds("tiny") == []


def test_serve_without_a_persistent_server_says_how_to_start_one(tmp_path, capsys):
    assert "PREFECT_API_URL" not in os.environ
    assert main(["serve", "-w", str(tmp_path / "ws"), "--interval", "60"]) == 1
    err = capsys.readouterr().err
    assert "needs a persistent Prefect server" in err and "baldflow server" in err
