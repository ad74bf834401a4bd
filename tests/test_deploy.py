"""Scheduled cycles the way teams run Prefect: `baldflow deploy` registers the cycle in a work
pool of the team's Prefect server (on PostgreSQL, the session's team_stack), and a real
`prefect worker start --pool POOL`, started elsewhere, runs the cycles from the installed
package. The worker is stopped by its process group on every way out.

The session's Prefect test harness must not see any of this: the server is reached over HTTP
with its URL, and the CLI and the worker run as subprocesses with PREFECT_API_URL set.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid

import httpx
import pytest
import yaml

from baldflow.cli import main
from baldflow.stack.process import ManagedProcess
from baldflow.workspace import Workspace
from baldflow.workspace.ledger import read_ledger

# A cycle of the tiny campaign: a flow-run process (imports ~5 s) and one round (~3 s). Bounds
# for a busy 2-core machine.
RUN_S = 120
# Yearly: the schedule is registered, but no scheduled run falls inside the test.
CRON = "0 0 1 1 *"
FINAL = {"COMPLETED", "CANCELLED", "FAILED", "CRASHED"}


def _cli_deploy(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "baldflow.cli", "deploy", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _api(method: str, url: str, **kwargs) -> httpx.Response:
    response = httpx.request(method, url, timeout=10, **kwargs)
    response.raise_for_status()
    return response


def _wait_final(api: str, run_ids: list[str], worker: ManagedProcess) -> dict[str, dict]:
    deadline = time.monotonic() + RUN_S
    while True:
        runs = {rid: _api("GET", f"{api}/flow_runs/{rid}").json() for rid in run_ids}
        if all(run["state_type"] in FINAL for run in runs.values()):
            return runs
        if not worker.running():
            raise AssertionError(f"the worker exited:\n{worker.log_tail(40)}")
        if time.monotonic() > deadline:
            states = {rid: run["state_type"] for rid, run in runs.items()}
            raise AssertionError(f"runs not final after {RUN_S} s: {states}\n{worker.log_tail(40)}")
        time.sleep(0.5)


def test_a_worker_runs_the_deployed_cycle_one_at_a_time(tmp_path, tiny_params, team_stack):
    api = team_stack.prefect_api_url
    # The server is the session's, shared with other tests: names of this test's own.
    suffix = uuid.uuid4().hex[:8]
    pool, name = f"baldflow-test-{suffix}", f"tiny-{suffix}"
    env = dict(os.environ)
    env.update(
        {
            "PREFECT_API_URL": api,
            "PREFECT_HOME": str(tmp_path / "client-home"),
            "PREFECT_LOGGING_LEVEL": "WARNING",
        }
    )
    workspace = tmp_path / "ws"
    tiny_params["campaign"]["rounds"] = 20
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_params))
    assert main(["init", str(workspace), "--config", str(params_file)]) == 0

    started = time.monotonic()
    common = ["-w", str(workspace), "--campaign", "tiny", "--pool", pool, "--name", name]
    first = _cli_deploy([*common, "--interval", "86400", "--set", "training.max_epochs=3"], env)
    assert first.returncode == 0, first.stderr
    assert f"prefect worker start --pool {pool}\n" in first.stdout
    assert f"baldflow-cycle/{name}" in first.stdout and "created now" in first.stdout
    # Again, with another schedule: the same deployment, updated in place.
    second = _cli_deploy([*common, "--cron", CRON], env)
    assert second.returncode == 0, second.stderr
    assert "created now" not in second.stdout
    deployment = _api("GET", f"{api}/deployments/name/baldflow-cycle/{name}").json()
    found = _api(
        "POST", f"{api}/deployments/filter", json={"deployments": {"name": {"any_": [name]}}}
    ).json()
    assert [d["id"] for d in found] == [deployment["id"]]
    assert [s["schedule"].get("cron") for s in deployment["schedules"]] == [CRON]
    assert deployment["work_pool_name"] == pool
    assert deployment["entrypoint"] == "baldflow.flows.cycle.cycle_flow"
    assert not deployment["pull_steps"] and not deployment["path"]
    assert deployment["parameters"] == {
        "workspace": str(workspace.resolve()),
        "config": None,
        "overrides": ["campaign.name=tiny"],
        "campaign": "tiny",
    }
    assert deployment["global_concurrency_limit"]["limit"] == 1
    assert deployment["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
    assert _api("GET", f"{api}/work_pools/{pool}").json()["type"] == "process"

    # The worker runs from a directory with no code in it: the flow comes from the package.
    elsewhere = tmp_path / "worker-cwd"
    elsewhere.mkdir()
    worker_env = dict(env)
    worker_env.update(
        {
            "PREFECT_HOME": str(tmp_path / "worker-home"),
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_LOGGING_LEVEL": "INFO",
            "OMP_NUM_THREADS": "1",  # the tests' one torch thread, in the flow-run processes
        }
    )
    worker = ManagedProcess(
        f"prefect worker for pool {pool}",
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool],
        env=worker_env,
        cwd=elsewhere,
        log_path=tmp_path / "worker.log",
    )
    trigger = f"{api}/deployments/{deployment['id']}/create_flow_run"
    try:
        worker.start()
        # Two triggers at once: one cycle runs, the other is cancelled, not queued behind it.
        pair = [_api("POST", trigger, json={}).json()["id"] for _ in range(2)]
        runs = _wait_final(api, pair, worker)
        assert sorted(run["state_type"] for run in runs.values()) == ["CANCELLED", "COMPLETED"]
        # The next trigger, once the first cycle is done, runs the next round.
        later = _api("POST", trigger, json={}).json()["id"]
        runs.update(_wait_final(api, [later], worker))
        assert runs[later]["state_type"] == "COMPLETED", worker.log_tail(40)
        elapsed = time.monotonic() - started
    finally:
        worker.stop(timeout=3)
        with contextlib.suppress(httpx.HTTPError):
            _api("DELETE", f"{api}/deployments/{deployment['id']}")
            _api("DELETE", f"{api}/work_pools/{pool}")
    print(f"deploy twice, worker, 3 triggers: {elapsed:.1f} s")

    ws = Workspace(workspace)
    assert ws.completed_rounds("tiny") == [0, 1]
    tags = ws.git("tag", "--list", "tiny/*").split()
    assert tags == ["tiny/round-0000", "tiny/round-0001"]
    completed = {rid for rid, run in runs.items() if run["state_type"] == "COMPLETED"}
    assert all(runs[rid]["deployment_id"] == deployment["id"] for rid in completed)
    # Each round was committed by its own flow run of the deployment.
    ledger = read_ledger(ws.ledger_path("tiny"))
    assert {r.prefect_flow_run_id for r in ledger} == completed
    assert not (elsewhere.exists() and any(elsewhere.iterdir()))
    assert ws.git("status", "--porcelain") == ""


def test_deploy_refuses_without_a_persistent_server(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # no profile naming a server either
    result = _cli_deploy(
        ["-w", str(tmp_path / "ws"), "--campaign", "tiny", "--pool", "p", "--cron", CRON], env
    )
    assert result.returncode == 1
    assert "PREFECT_API_URL is not set" in result.stderr
    assert not (tmp_path / "ws").exists()


def test_an_override_naming_another_campaign_is_refused():
    from baldflow.config import ConfigError
    from baldflow.flows.deploy import cycle_overrides

    assert cycle_overrides("tiny", ["acquisition.batch_size=5"]) == [
        "acquisition.batch_size=5",
        "campaign.name=tiny",
    ]
    assert cycle_overrides("tiny", ["campaign.name=tiny"])[-1] == "campaign.name=tiny"
    with pytest.raises(ConfigError, match="contradicts --campaign tiny"):
        cycle_overrides("tiny", ["campaign.name=other"])


def test_worker_command_names_the_pool_and_queue():
    from baldflow.flows.deploy import CycleDeployment

    deployment = CycleDeployment(
        id=uuid.uuid4(),
        flow_name="baldflow-cycle",
        name="tiny-cycle",
        pool="gpu pool",
        pool_type="process",
        pool_created=False,
        work_queue="nightly",
        parameters={},
    )
    assert deployment.worker_command() == (
        "prefect worker start --pool 'gpu pool' --work-queue nightly"
    )
    assert deployment.full_name == "baldflow-cycle/tiny-cycle"


def test_a_deployed_cycle_resumes_a_campaign_with_its_recorded_parameters(tmp_path, tiny_params):
    """params.yaml may say otherwise (it did for a later campaign): a started campaign's cycle
    keeps the parameters the campaign started with, as `run --campaign` does."""
    import yaml

    from baldflow.config import dump_yaml, validate
    from baldflow.flows.cycle import load_cycle_config
    from baldflow.workspace import Workspace
    from baldflow.workspace.repo import CAMPAIGN_FILE

    ws = Workspace.init(tmp_path / "ws", params_text=dump_yaml(validate(tiny_params)))
    acquisition = {**tiny_params["acquisition"], "batch_size": 7}
    started = validate({**tiny_params, "acquisition": acquisition})
    ws.campaign_dir("tiny").mkdir(parents=True)
    (ws.campaign_dir("tiny") / CAMPAIGN_FILE).write_text(yaml.safe_dump(started.identity()))
    ws.close()
    resumed = load_cycle_config(ws.root, None, ["campaign.name=tiny"], "tiny")
    assert resumed.acquisition.batch_size == 7
    fresh = load_cycle_config(ws.root, None, ["campaign.name=other"], "other")
    assert fresh.acquisition.batch_size == tiny_params["acquisition"]["batch_size"]
