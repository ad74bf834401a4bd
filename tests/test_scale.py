"""Rounds scored in shards on real Dask clusters, through the campaign flow, against a
persistent Prefect server (the session's): a temporary LocalCluster for a pool in memory and a
standing scheduler + workers (started as processes, stopped by PID) for a pool on disk. Each
acquires exactly what the same campaign scored in one process acquires."""

from __future__ import annotations

import copy
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from helpers import run_flow, write_disk_source

pytest.importorskip("prefect_dask")

from baldflow.compute import campaign_data  # noqa: E402
from baldflow.config import validate  # noqa: E402
from baldflow.data.ondisk import DiskPool  # noqa: E402
from baldflow.data.pool_formats import manifest  # noqa: E402
from baldflow.stack.dask_cluster import DaskCluster  # noqa: E402
from baldflow.stack.process import free_port  # noqa: E402

pytestmark = pytest.mark.usefixtures("prefect_harness")
# What a round decides; run ids, timestamps and flow runs differ from run to run.
DECIDED = ("round", "sample_id", "label", "strategy", "rank", "score",
           "first_pick_probability", "selection_key")  # fmt: skip


@pytest.fixture(autouse=True)
def _workers_report_to_the_session_server(prefect_harness, monkeypatch):
    # Dask workers are other processes: they find the server through the environment.
    monkeypatch.setenv("PREFECT_API_URL", prefect_harness)


def decided(workspace: Path, campaign: str) -> list[tuple]:
    with open(workspace / "data" / campaign / "ledger.csv", newline="") as f:
        return [tuple(row[k] for k in DECIDED) for row in csv.DictReader(f)]


def with_scale(params: dict, **scale) -> dict:
    params = copy.deepcopy(params)
    params["scale"] = scale
    return params


def test_local_cluster_rounds_acquire_what_one_process_acquires(
    tmp_path, tiny_params, prefect_harness
):
    tiny_params["campaign"]["rounds"] = 2
    run_flow(tmp_path / "one", tiny_params)
    result = run_flow(
        tmp_path / "dask", with_scale(tiny_params, runner="dask", workers=2, shards=3)
    )
    assert result["stopped"] == "rounds"
    one, dask = decided(tmp_path / "one", "tiny"), decided(tmp_path / "dask", "tiny")
    assert len(one) == 10 + 2 * 5 and dask == one

    # Every shard was a Prefect task run, on a worker process, reported to the server.
    response = httpx.post(
        f"{prefect_harness}/task_runs/filter",
        json={"task_runs": {"name": {"like_": "score shard [round 2"}}},
        timeout=30,
    )
    runs = [r for r in response.json() if r["state"]["type"] == "COMPLETED"]
    assert len(runs) >= 3
    # The LocalCluster's workers are gone with the round.
    children = subprocess.run(
        ["ps", "--ppid", str(os.getpid()), "-o", "pid=,args="], capture_output=True, text=True
    ).stdout
    workers = [line for line in children.splitlines() if "spawn_main" in line]
    assert not workers, children


def test_disk_pool_on_a_standing_cluster(tmp_path, tiny_params, prefect_harness):
    write_disk_source(tmp_path / "source", tiny_params)
    params = copy.deepcopy(tiny_params)
    params["campaign"]["rounds"] = 2
    params["acquisition"]["strategy"] = "softrank-bald"  # the two-pass selection
    params["data"] = {"source": "disk", "root": str(tmp_path / "source")}
    run_flow(tmp_path / "one", params)  # runner local: read from disk shard by shard

    env = {**os.environ, "PREFECT_API_URL": prefect_harness, "OMP_NUM_THREADS": "1"}
    cluster = DaskCluster(tmp_path / "dask", workers=2, threads_per_worker=1, env=env)
    try:
        cluster.start()
        scaled = with_scale(params, runner="dask", dask_address=cluster.address, shards=4)
        result = run_flow(tmp_path / "dask", scaled)
    finally:
        cluster.stop()
    assert result["stopped"] == "rounds"
    one, dask = decided(tmp_path / "one", "tiny"), decided(tmp_path / "dask", "tiny")
    assert len(one) == 10 + 2 * 5 and dask == one

    # The same pool as an uncompressed .npz read in place (baldflow.data.lazy_pools).
    npz_source = tmp_path / "npz-source"
    npz_source.mkdir()
    with DiskPool.open(tmp_path / "source" / "pool") as pool:
        np.savez(
            npz_source / "pool.npz", x=pool.raw_rows(0, len(pool)), y=pool.labels(0, len(pool)),
            ids=np.array(pool.ids(0, len(pool))), class_names=np.array(pool.class_names),
        )  # fmt: skip
    for part in ("val", "test"):
        shutil.copytree(tmp_path / "source" / part, npz_source / part)
    npz_params = copy.deepcopy(params)
    npz_params["data"]["root"] = str(npz_source)
    run_flow(tmp_path / "npz", npz_params)
    assert decided(tmp_path / "npz", "tiny") == one

    # Which pool every round scored: its manifest, versioned with DVC in each round's commit.
    ws = tmp_path / "dask"
    tracked = subprocess.run(
        ["git", "-C", str(ws), "show", "tiny/round-0002:data/tiny/pool-manifest.json.dvc"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "pool-manifest.json" in tracked
    recorded = json.loads((ws / "data" / "tiny" / "pool-manifest.json").read_text())
    assert recorded["sha256"] == manifest(tmp_path / "source" / "pool")["sha256"]
    assert recorded["count"] == len(validate(tiny_params) and campaign_data.prepare_data(
        validate(tiny_params)).splits.pool_ids)  # fmt: skip


def test_a_disk_source_with_in_memory_options_is_refused(tmp_path, tiny_params):
    params = copy.deepcopy(tiny_params)
    params["data"] = {"source": "disk", "root": str(tmp_path), "repeat": 2}
    with pytest.raises(Exception, match="data.repeat, data.noise_std and data.options"):
        campaign_data.prepare_data(validate(params))
    params["data"] = {"source": "disk"}
    with pytest.raises(Exception, match="needs data.root"):
        campaign_data.prepare_data(validate(params))


def test_preflight_names_a_cluster_that_does_not_answer_and_a_missing_disk_pool(
    tmp_path, tiny_params
):
    from baldflow.preflight import PreflightError, check_data, check_scale

    port = free_port()
    params = with_scale(tiny_params, runner="dask", dask_address=f"tcp://127.0.0.1:{port}")
    with pytest.raises(PreflightError, match=f"127.0.0.1:{port} does not answer"):
        check_scale(validate(params))
    check_scale(validate(with_scale(tiny_params, runner="dask")))  # a LocalCluster: fine
    params = copy.deepcopy(tiny_params)
    params["data"] = {"source": "disk", "root": str(tmp_path)}
    (tmp_path / "pool").mkdir()
    with pytest.raises(PreflightError, match="lacks a finished pool in pool/, val/, test/"):
        check_data(validate(params))


def test_a_sharded_round_killed_after_staging_resumes_to_the_same_batches(
    tmp_path, tiny_params, prefect_harness
):
    write_disk_source(tmp_path / "source", tiny_params)
    params = copy.deepcopy(tiny_params)
    params["campaign"]["rounds"] = 2
    params["data"] = {"source": "disk", "root": str(tmp_path / "source")}
    run_flow(tmp_path / "reference", params)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    command = [sys.executable, "-m", "baldflow.cli", "run", "--workspace", str(tmp_path / "ws"),
               "--config", str(params_file)]  # fmt: skip
    env = {**os.environ, "PREFECT_API_URL": prefect_harness}
    killed = subprocess.run(
        command, env={**env, "BALDFLOW_FAULT": "stage-scoring:after:2:kill"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (tmp_path / "ws" / ".git" / "baldflow" / "scoring" / "tiny" / "round-0002").is_dir()
    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert decided(tmp_path / "ws", "tiny") == decided(tmp_path / "reference", "tiny")


def test_badge_on_a_sharded_pool_says_its_batch_is_an_approximation(tmp_path, tiny_params, caplog):
    write_disk_source(tmp_path / "source", tiny_params)
    params = copy.deepcopy(tiny_params)
    params["acquisition"]["strategy"] = "badge"
    params["data"] = {"source": "disk", "root": str(tmp_path / "source")}
    result = run_flow(tmp_path / "ws", params, rounds=1)
    assert result["stopped"] == "rounds"
    assert len(decided(tmp_path / "ws", "tiny")) == 10 + 5
    warned = [r.getMessage() for r in caplog.records if r.name == "prefect.task_runs"]
    assert any("round 1: badge on a pool scored in shards draws from each shard's" in message
               for message in warned), warned  # fmt: skip
