"""Soak test of crash safety: `baldflow run` SIGKILLed at random moments, rerun until complete.

Each trial runs a tiny campaign in a fresh workspace, kills the CLI process 1..--max-kills
times after a random delay (drawn from --seed), then lets a last run finish, and checks:
the workspace invariants (baldflow.workspace.consistency.check_campaign), the acquisitions
against an uninterrupted run of the same campaign, and that no Prefect flow run of the
workspace is left Running or Pending (the run after a kill marks it Crashed). Every run
writes a fault trace, so the report says where each kill landed. A failed trial's
workspace is kept for inspection.

    python benchmarks/soak.py --trials 20 --seed 0
    PREFECT_API_URL=http://127.0.0.1:4200/api python benchmarks/soak.py   # a running server

Without PREFECT_API_URL it starts a Prefect server of its own on 127.0.0.1 and stops it (by
process group) on every way out.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from baldflow.stack.prefect_server import PrefectServer
from baldflow.stack.process import stop_process_group

# The test suite's tiny campaign (tests/conftest.py TINY_PARAMS): every step, in seconds.
TINY_PARAMS = {
    "campaign": {"name": "soak", "seed": 3, "rounds": 3, "initial_per_class": 1},
    "data": {"source": "digits", "options": {"pool_size": 300}},
    "model": {"name": "mlp", "dropout": 0.5},
    "training": {
        "max_epochs": 3,
        "epoch_samples": 128,
        "patience": 2,
        "eval_mc_samples": 3,
        "device": "cpu",
    },
    "acquisition": {"strategy": "power-bald", "batch_size": 5, "mc_samples": 4},
}
RUN_TIMEOUT_S = 600
# A killed process's children (git, DVC) may outlive it by a moment; the next run starts
# once they are gone, or after this long, when they are killed too.
CHILDREN_GRACE_S = 10
EXTRA_INVARIANTS = (
    "the last run, after the kills, exits 0",
    "the acquisitions (round, sample_id, label) equal those of an uninterrupted run",
    "no Prefect flow run of the workspace is left Running or Pending",
)


@contextlib.contextmanager
def prefect_server(home: Path):
    """PREFECT_API_URL if set, else a server of our own, stopped whatever happens."""
    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"], "given by PREFECT_API_URL"
        return
    with PrefectServer(home / "prefect-home", temporary=True, startup_timeout=180) as server:
        yield server.api_url, f"started here (pid {server.process.pid}, {server.api_url})"


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Runner:
    """Starts `python -m baldflow.cli run` on one workspace and kills it when asked."""

    def __init__(self, api: str, params_file: Path):
        self.api = api
        self.params_file = params_file

    def start(self, workspace: Path, log: Path, trace: Path) -> subprocess.Popen:
        env = dict(os.environ)
        env.update(
            PREFECT_API_URL=self.api,
            BALDFLOW_FAULT_TRACE=str(trace),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            DO_NOT_TRACK="1",
            MLFLOW_DISABLE_TELEMETRY="true",
            DVC_NO_ANALYTICS="1",
        )
        env.pop("BALDFLOW_FAULT", None)
        with log.open("w") as out:
            # Its own process group: what it leaves running after the kill can be found.
            return subprocess.Popen(
                [sys.executable, "-m", "baldflow.cli", "run", "--workspace", str(workspace)]
                + ["--config", str(self.params_file)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def run(self, workspace: Path, log: Path, trace: Path) -> int:
        proc = self.start(workspace, log, trace)
        try:
            return proc.wait(timeout=RUN_TIMEOUT_S)
        finally:
            stop_process_group(proc)

    def kill_after(self, workspace: Path, log: Path, trace: Path, delay: float) -> int | None:
        """Run, SIGKILL the CLI process after `delay` s; its exit status if it ended first."""
        proc = self.start(workspace, log, trace)
        try:
            try:
                return proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                pass
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            deadline = time.monotonic() + CHILDREN_GRACE_S
            while group_alive(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            return None
        finally:
            stop_process_group(proc)


def last_point(trace: Path) -> str:
    """Where a killed run was: the last fault point it passed."""
    if not trace.exists() or not trace.read_text().split():
        return "before any fault point (start-up)"
    return "after " + trace.read_text().split()[-1]


def acquisitions(workspace: Path, campaign: str) -> list[tuple[int, str, int]]:
    from baldflow.workspace import Workspace

    return [(r.round, r.sample_id, r.label) for r in Workspace(workspace).ledger(campaign)]


def live_flow_runs(api: str, workspace: Path) -> list[str]:
    import httpx

    response = httpx.post(
        f"{api}/flow_runs/filter",
        json={
            "flows": {"name": {"any_": ["baldflow-campaign", "baldflow-cycle"]}},
            "flow_runs": {"state": {"type": {"any_": ["RUNNING", "PENDING"]}}},
            "limit": 200,
            "offset": 0,
        },
        timeout=30,
    )
    response.raise_for_status()
    here = workspace.resolve()
    return [
        f"{run['name']} ({run['state_type']})"
        for run in response.json()
        if Path(str(run["parameters"].get("workspace", ""))).resolve() == here
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the tiny campaign")
    parser.add_argument("--max-kills", type=int, default=3, help="kills per trial, at most")
    parser.add_argument("--keep", action="store_true", help="keep every trial's workspace")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args()
    if args.trials < 1 or args.max_kills < 1:
        parser.error("--trials and --max-kills must be >= 1")

    from baldflow.workspace import offline_environment
    from baldflow.workspace.consistency import INVARIANTS, check_campaign

    offline_environment()

    def interrupted(signum, frame):
        # As Ctrl-C: unwinds through the `finally`s that stop the server and the runs.
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    rng = random.Random(args.seed)
    params = {k: dict(v) for k, v in TINY_PARAMS.items()}
    params["campaign"]["rounds"] = args.rounds
    campaign = params["campaign"]["name"]
    home = Path(tempfile.mkdtemp(prefix="baldflow-soak-"))
    params_file = home / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    started = time.monotonic()
    failures: list[dict] = []
    kills = 0
    finished_first = 0
    landed: collections.Counter[str] = collections.Counter()
    try:
        with prefect_server(home) as (api, server_note):
            print(f"Prefect server: {server_note}", flush=True)
            runner = Runner(api, params_file)
            ref = home / "reference"
            t0 = time.monotonic()
            code = runner.run(ref / "ws", home / "reference.log", ref / "trace")
            reference_s = time.monotonic() - t0
            if code != 0:
                raise SystemExit(f"the uninterrupted run failed; see {home / 'reference.log'}")
            expected = acquisitions(ref / "ws", campaign)
            print(
                f"reference: {args.rounds} rounds uninterrupted in {reference_s:.1f} s; kills at "
                f"uniform random delays in [0, {1.2 * reference_s:.1f}] s",
                flush=True,
            )
            for trial in range(1, args.trials + 1):
                tdir = home / f"trial-{trial:03d}"
                tdir.mkdir()
                workspace = tdir / "ws"
                events = []
                for attempt in range(rng.randint(1, args.max_kills)):
                    delay = rng.uniform(0.0, 1.2 * reference_s)
                    trace = tdir / f"trace-{attempt}"
                    log = tdir / f"run-{attempt}.log"
                    ended = runner.kill_after(workspace, log, trace, delay)
                    if ended is None:
                        kills += 1
                        where = last_point(trace)
                        # By point, all rounds together.
                        landed[where.rpartition(":")[0] if ":" in where else where] += 1
                        events.append(f"killed at {delay:.1f} s {where}")
                    else:
                        finished_first += 1
                        events.append(f"ended with {ended} before its kill at {delay:.1f} s")
                code = runner.run(workspace, tdir / "final.log", tdir / "trace-final")
                problems = [] if code == 0 else [f"the last run exited {code} (see final.log)"]
                problems += check_campaign(workspace, campaign)
                if acquisitions(workspace, campaign) != expected:
                    problems.append("the acquisitions differ from the uninterrupted run's")
                alive = live_flow_runs(api, workspace)
                if alive:
                    problems.append(f"flow runs left alive: {', '.join(alive)}")
                status = "ok" if not problems else "FAILED"
                print(f"trial {trial:3d}: {status}; " + "; ".join(events), flush=True)
                for problem in problems:
                    print(f"    - {problem}", flush=True)
                if problems:
                    failures.append({"trial": trial, "workspace": str(tdir), "problems": problems})
                elif not args.keep:
                    shutil.rmtree(tdir, ignore_errors=True)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        seconds = time.monotonic() - started
        if not failures and not args.keep:
            shutil.rmtree(home, ignore_errors=True)

    print()
    print(f"trials: {args.trials} (seed {args.seed}, {args.rounds} rounds each)")
    print(f"kills delivered: {kills} (runs that ended before their kill: {finished_first})")
    print(f"failures: {len(failures)}")
    for failure in failures:
        print(f"  trial {failure['trial']}: workspace kept at {failure['workspace']}")
    print("where the kills landed (last fault point passed):")
    for where, count in sorted(landed.items(), key=lambda item: -item[1]):
        print(f"  {count:4d}  {where}")
    print("checked after every trial:")
    for invariant in (*INVARIANTS, *EXTRA_INVARIANTS):
        print(f"  - {invariant}")
    print(f"wall time: {seconds:.0f} s")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "trials": args.trials,
                    "seed": args.seed,
                    "rounds": args.rounds,
                    "kills": kills,
                    "ended_before_kill": finished_first,
                    "failures": failures,
                    "landed": dict(landed),
                    "invariants": [*INVARIANTS, *EXTRA_INVARIANTS],
                    "seconds": seconds,
                },
                indent=2,
            )
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
