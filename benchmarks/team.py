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

    python benchmarks/team.py [--rounds 8] [--pool-size 600]
"""

from __future__ import annotations

import argparse
import json
import os
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
print("RESULT " + json.dumps(result["timings"]))
"""


def params_for(rounds: int, pool_size: int, mlflow_uri: str | None) -> dict:
    return {
        "campaign": {"name": "bench", "seed": 1, "rounds": rounds, "initial_per_class": 2},
        "data": {"source": "digits", "options": {"pool_size": pool_size}},
        "model": {"name": "mlp", "dropout": 0.5},
        "training": {"max_epochs": 5, "epoch_samples": 256, "patience": 2, "device": "cpu"},
        "acquisition": {"strategy": "power-bald", "batch_size": 10, "mc_samples": 8},
        "tracking": {"mlflow_uri": mlflow_uri, "experiment": "bench-team"},
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
    args = parser.parse_args()

    from baldflow.stack.team import stack_down, stack_up
    from baldflow.workspace import Workspace, remote

    # Under /tmp itself: the PostgreSQL account must be able to enter the stack's directory.
    stack_dir = Path(tempfile.mkdtemp(prefix="baldflow-bench-stack-"))
    work = Path(tempfile.mkdtemp(prefix="baldflow-bench-team-"))
    base_env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    base_env["BALDFLOW_OPERATOR"] = "bench"
    try:
        stack = stack_up(stack_dir)
        print("team stack start, seconds to healthy:")
        for part, seconds in stack.timings.items():
            print(f"  {part:<12} {seconds:6.1f}")

        local = run_setup(
            "local", work / "local", params_for(args.rounds, args.pool_size, None), base_env
        )
        print(f"local (SQLite MLflow, own Prefect server, no git remote): {summary(local)}")

        shared_params = params_for(args.rounds, args.pool_size, stack.mlflow_uri)
        with Workspace.init(
            work / "team", params_text=yaml.safe_dump(shared_params), remote=stack.dvc_remote
        ) as ws:
            remote.connect(ws, stack.git_remote)
        team_env = {**base_env, "PREFECT_API_URL": stack.prefect_api_url}
        team = run_setup("team", work / "team", shared_params, team_env)
        print(f"team (MLflow + Prefect on PostgreSQL, git + DVC remotes): {summary(team)}")
    finally:
        stack_down(stack_dir)


if __name__ == "__main__":
    main()
