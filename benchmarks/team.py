"""Bookkeeping seconds per round on the team stack against the local default.

Starts a team stack (PostgreSQL, MLflow on it with proxied artifacts, Prefect on it, a bare git
remote and a DVC remote directory) in a temporary directory, then runs the same small campaign
twice, each in a process of its own:

- local: the workspace's own SQLite MLflow store, a temporary Prefect server of the run's own,
  a DVC remote directory and no git remote (the default of `baldflow run`);
- team:  the stack's MLflow and Prefect servers, and a workspace shared through its git and
  DVC remotes (each round syncs, holds the workspace's Prefect concurrency slot and pushes).

Prints the stack's start times and, per setup, the median and mean bookkeeping seconds per round
(everything but training, scoring, selection and labeling) and the median round wall time.

With --auth the stack runs MLflow behind basic auth (and Prefect with its auth string), and
the team setup runs as a member made by `baldflow stack user add`, as a team would.

    python benchmarks/team.py [--rounds 8] [--pool-size 600] [--no-register] [--auth]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

# What one run of the campaign does, in a child process: the Prefect API must be chosen before
# prefect is imported, and the two setups need different ones.
_CHILD = r"""
import json, sys
from baldflow.workspace import offline_environment
workspace, params_path = sys.argv[1], sys.argv[2]
offline_environment(workspace)
from baldflow.stack.prefect_server import use_prefect_api
use_prefect_api(workspace + "/.prefect")
import yaml
from baldflow.flows.campaign import campaign_flow
result = campaign_flow(workspace=workspace, params=yaml.safe_load(open(params_path)))
# Where the time goes: each task's run time as the Prefect server recorded it, summed by name.
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.sorting import TaskRunSort
runs = []
with get_client(sync_client=True) as client:
    while True:  # the API pages by at most 200
        page = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[result["flow_run_id"]])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=200, offset=len(runs),
        )
        runs += page
        if len(page) < 200:
            break
tasks = {}
for run in runs:
    name = run.name.rsplit("-", 1)[0] if run.name[-4:-3] == "-" else run.name
    name = name.split(" [")[0]
    tasks[name] = tasks.get(name, 0.0) + run.total_run_time.total_seconds()
print("RESULT " + json.dumps({"timings": result["timings"], "tasks": tasks}))
"""


def params_for(rounds: int, pool_size: int, mlflow_uri: str | None, register: bool) -> dict:
    return {
        "campaign": {"name": "bench", "seed": 1, "rounds": rounds, "initial_per_class": 2},
        "data": {"source": "digits", "options": {"pool_size": pool_size}},
        "model": {"name": "mlp", "dropout": 0.5},
        "training": {"max_epochs": 5, "epoch_samples": 256, "patience": 2, "device": "cpu"},
        "acquisition": {"strategy": "power-bald", "batch_size": 10, "mc_samples": 8},
        "tracking": {
            "mlflow_uri": mlflow_uri,
            "experiment": "bench-team",
            "register_model": register,
        },
    }


def run_setup(name: str, workspace: Path, params: dict, env: dict[str, str]) -> list[dict]:
    path = workspace.parent / f"{name}-params.yaml"
    path.write_text(yaml.safe_dump(params))
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(workspace), str(path)],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"{name} setup failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def task_table(local: dict[str, float], team: dict[str, float], rounds: int) -> None:
    """Seconds per round of each task, both setups side by side, largest team cost first."""
    print(f"{'task (seconds per round)':<48} {'local':>7} {'team':>7}")
    for name in sorted(set(local) | set(team), key=lambda n: -team.get(n, 0.0)):
        here, there = local.get(name, 0.0) / rounds, team.get(name, 0.0) / rounds
        print(f"  {name:<46} {here:7.3f} {there:7.3f}")


def summary(timings: list[dict]) -> str:
    books = [t["seconds_bookkeeping"] for t in timings]
    walls = [t["seconds_round"] for t in timings]
    return (
        f"{len(timings)} rounds, bookkeeping per round median {statistics.median(books):.2f} s "
        f"(mean {statistics.mean(books):.2f} s), round wall time median "
        f"{statistics.median(walls):.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--pool-size", type=int, default=600)
    parser.add_argument(
        "--no-register", action="store_true", help="tracking.register_model: false in both"
    )
    parser.add_argument(
        "--auth", action="store_true", help="a stack with logins; the team setup as a member"
    )
    args = parser.parse_args()

    from baldflow.stack.members import add_member, member_environment
    from baldflow.stack.team import stack_down, stack_up
    from baldflow.workspace import Workspace, remote

    # Under /tmp itself: the PostgreSQL account must be able to enter the stack's directory.
    stack_dir = Path(tempfile.mkdtemp(prefix="baldflow-bench-stack-"))
    work = Path(tempfile.mkdtemp(prefix="baldflow-bench-team-"))
    base_env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    base_env["BALDFLOW_OPERATOR"] = "bench"
    try:
        stack = stack_up(stack_dir, auth=args.auth)
        print("team stack start, seconds to healthy:")
        for part, seconds in stack.timings.items():
            print(f"  {part:<12} {seconds:6.1f}")

        register = not args.no_register
        local_params = params_for(args.rounds, args.pool_size, None, register)
        local = run_setup("local", work / "local", local_params, base_env)
        print(
            "local (SQLite MLflow, own Prefect server, no git remote): "
            + summary(local["timings"])
        )

        shared_params = params_for(args.rounds, args.pool_size, stack.mlflow_uri, register)
        with Workspace.init(
            work / "team", params_text=yaml.safe_dump(shared_params), remote=stack.dvc_remote
        ) as ws:
            remote.connect(ws, stack.git_remote)
        team_env = {**base_env, "PREFECT_API_URL": stack.prefect_api_url}
        if args.auth:
            member = add_member(stack_dir, "bench")
            team_env.update(member_environment(stack, member.name, member.password))
        team = run_setup("team", work / "team", shared_params, team_env)
        print(
            "team (MLflow + Prefect on PostgreSQL, git + DVC remotes): "
            + summary(team["timings"])
        )
        task_table(local["tasks"], team["tasks"], args.rounds)
    finally:
        stack_down(stack_dir)
        shutil.rmtree(stack_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
