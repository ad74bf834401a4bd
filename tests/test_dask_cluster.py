"""The standing Dask cluster (baldflow.stack.dask_cluster): it computes on N worker processes,
listens on 127.0.0.1 only, stops by PID leaving nothing behind, refuses a taken port before it
starts anything, and serves a Prefect flow through prefect_dask.DaskTaskRunner."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import pytest

try:
    import distributed  # noqa: F401
except ImportError as exc:  # the `dask` extra is not installed
    if os.environ.get("CI"):
        raise RuntimeError(f"CI installs the dask extra; distributed is missing: {exc}") from exc
    pytest.skip(
        f"the Dask cluster needs the `dask` extra (distributed): {exc}", allow_module_level=True
    )

import psutil  # a dependency of distributed  # noqa: E402
from distributed import Client  # noqa: E402

from baldflow.stack.dask_cluster import (  # noqa: E402
    DaskCluster,
    DaskPortTakenError,
    DaskProcessExitedError,
    stop_recorded_cluster,
)
from baldflow.stack.loopback import port_is_free  # noqa: E402
from baldflow.stack.process import start_ticks  # noqa: E402


def _listeners(pids: list[int]) -> list[tuple[int, str, int]]:
    """(pid, ip, port) of every TCP socket in LISTEN state that these processes hold."""
    found = []
    for pid in pids:
        try:
            connections = psutil.Process(pid).net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        for conn in connections:
            if conn.status == psutil.CONN_LISTEN:
                found.append((pid, conn.laddr.ip, conn.laddr.port))
    return found


def _ss_listeners(pids: list[int]) -> list[str]:
    """The local addresses `ss -ltnp` shows for these PIDs (the operator's view)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    return [
        line.split()[3]
        for line in out.splitlines()
        if any(f"pid={pid}," in line for pid in pids)
    ]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with DaskCluster(tmp_path_factory.mktemp("dask"), workers=2, threads_per_worker=1) as running:
        yield running


def test_computes_on_two_worker_processes(cluster):
    # Local functions: cloudpickle sends them by value (the workers cannot import this module).
    def square(x: int) -> int:
        return x * x

    def worker_pid(_: int) -> int:
        time.sleep(0.05)  # long enough that one worker cannot take every task
        return os.getpid()

    assert cluster.running()
    assert cluster.address.startswith("tcp://127.0.0.1:")
    assert cluster.dashboard_url.startswith("http://127.0.0.1:")
    with Client(cluster.address, timeout=30, set_as_default=False) as client:
        assert sum(client.gather(client.map(square, range(100)))) == sum(
            x * x for x in range(100)
        )
        pids = set(client.gather(client.map(worker_pid, range(20))))
    assert len(pids) == 2
    assert os.getpid() not in pids
    assert pids <= set(cluster.pids())


def test_workers_keep_glibcs_dynamic_mmap_threshold_and_one_thread_each(cluster):
    """Dask's nannies would set MALLOC_TRIM_THRESHOLD_ (about 25% slower MC-dropout passes
    here); baldflow's workers run without it and keep Dask's one-thread settings."""

    def worker_environment() -> tuple[str | None, str | None]:
        return os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.environ.get("OMP_NUM_THREADS")

    with Client(cluster.address, timeout=30, set_as_default=False) as client:
        seen = set(client.run(worker_environment).values())
    assert seen == {(None, "1")}


def test_listens_on_loopback_only(cluster):
    pids = cluster.pids()
    listeners = _listeners(pids)
    ports = {port for _, _, port in listeners}
    assert cluster.scheduler_port in ports and cluster.dashboard_port in ports
    # scheduler + its dashboard, per worker: worker, its dashboard, its nanny
    assert len(listeners) >= 2 + 3 * 2, listeners
    assert {ip for _, ip, _ in listeners} == {"127.0.0.1"}, listeners
    if shutil.which("ss"):
        addresses = _ss_listeners(pids)
        assert len(addresses) == len(listeners)
        assert all(address.startswith("127.0.0.1:") for address in addresses), addresses


def test_stop_leaves_no_process_and_no_port(tmp_path):
    cluster = DaskCluster(tmp_path, workers=2).start()
    pids = cluster.pids()
    ports = {port for _, _, port in _listeners(pids)}
    assert len(pids) >= 4 and ports
    cluster.stop()
    # A zombie (exited, not yet reaped by init) counts as gone: start_ticks says None for it.
    assert [pid for pid in pids if start_ticks(pid) is not None] == []
    assert [port for port in ports if not port_is_free(port)] == []
    assert cluster.stop_seconds is not None and cluster.stop_seconds < 15
    cluster.stop()  # again: every part already gone is fine


def test_stop_tolerates_workers_already_gone(tmp_path):
    cluster = DaskCluster(tmp_path, workers=1).start()
    cluster.worker_process.kill_now()
    cluster.stop()
    assert cluster.pids() == []
    assert port_is_free(cluster.scheduler_port)


def test_detached_cluster_stops_from_its_record(tmp_path):
    cluster = DaskCluster(tmp_path, workers=1, detached=True).start()
    try:
        pids = cluster.pids()
        record = json.loads(json.dumps(cluster.record()))  # as another process would read it
        assert record["address"] == cluster.address
        assert stop_recorded_cluster(record) is True
        assert [pid for pid in pids if start_ticks(pid) is not None] == []
        assert stop_recorded_cluster(record) is False  # nothing left to stop
    finally:
        cluster.stop()


def test_taken_scheduler_port_starts_nothing(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cluster = DaskCluster(tmp_path / "c", scheduler_port=port)
        with pytest.raises(DaskPortTakenError, match=f"port {port} on 127.0.0.1 is taken"):
            cluster.start()
    assert cluster.scheduler is None and cluster.worker_process is None
    assert not (tmp_path / "c").exists()


def test_worker_that_exits_is_a_clear_error(tmp_path):
    cluster = DaskCluster(tmp_path, workers=1, memory_limit="not-a-size")
    expected = r"(?s)dask worker .*exited.*Could not interpret"  # the log tail says why
    with pytest.raises(DaskProcessExitedError, match=expected):
        cluster.start()
    assert not cluster.running() and cluster.pids() == []


_FLOW = textwrap.dedent(
    """
    import json, os, sys, time

    from prefect import flow, task
    from prefect_dask import DaskTaskRunner

    @task
    def shard(i):
        return i * i, os.getpid()

    @flow(task_runner=DaskTaskRunner(address=sys.argv[1]))
    def scoring():
        return [future.result() for future in shard.map(range(4))]

    if __name__ == "__main__":
        times = []
        for _ in range(2):  # the first run warms the workers' imports of prefect
            began = time.monotonic()
            results = scoring()
            times.append(time.monotonic() - began)
        print(json.dumps({"results": results, "seconds": times}))
    """
)


def test_prefect_flow_runs_its_tasks_on_the_cluster(team_stack, tmp_path):
    env = dict(os.environ, PREFECT_API_URL=team_stack.prefect_api_url)
    script = tmp_path / "flow.py"
    script.write_text(_FLOW, encoding="utf-8")
    with DaskCluster(tmp_path / "dask", workers=2, env=env) as cluster:
        done = subprocess.run(
            [sys.executable, str(script), cluster.address],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads(done.stdout.strip().splitlines()[-1])
        pids = set(cluster.pids())
        workers_log = cluster.workers_log.read_text(encoding="utf-8")
    assert [value for value, _ in report["results"]] == [0, 1, 4, 9]
    assert {pid for _, pid in report["results"]} <= pids  # ran on the cluster's workers
    # No worker started a temporary Prefect server of its own.
    assert "ephemeral" not in workers_log.lower() and "uvicorn" not in workers_log.lower()
    print(f"4-task flow: {report['seconds'][0]:.2f} s cold, {report['seconds'][1]:.2f} s warm")


def test_a_rounds_local_cluster_spawns_its_workers_without_malloc_trim(tiny_params):
    """The per-round LocalCluster (no scale.dask_address) spawns from the flow's Dask config:
    the same environment as baldflow's standing clusters."""
    import dask.config

    from baldflow.config import validate
    from baldflow.flows.scoring import dask_task_runner

    params = {**tiny_params, "scale": {"runner": "dask", "workers": 2}}
    key = "distributed.nanny.pre-spawn-environ"
    before = dict(dask.config.get(key))
    try:
        dask_task_runner(validate(params))
        spawned = dask.config.get(key)
        assert spawned["MALLOC_TRIM_THRESHOLD_"] is None
        assert spawned["OMP_NUM_THREADS"] == 1
    finally:
        dask.config.set({key: before})  # this process's Dask config as it was
