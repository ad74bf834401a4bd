"""Crash safety at every point where a round can stop (baldflow.faults), judged by the workspace
invariants of baldflow.workspace.consistency and by the acquisitions of an uninterrupted campaign.

- SIGKILL: a real `python -m baldflow.cli run` process kills itself at each point of
  ROUND_POINTS. A CLI process pays seconds of imports and Prefect start-up, so the kills share
  one workspace: the process killed at point i+1 is also the rerun that recovers from the kill
  at point i. After every kill the committed history is checked (check_history); after the
  final uninterrupted rerun, everything (check_campaign) and the ledger against the reference.
- Exception: the flow, called in this process, raises InjectedFault at each point (once, so a
  task retry may get through); after each, the history is checked, the campaign is run again
  without the fault and everything is checked.
- `baldflow label import` killed after storing the labels and again while completing the round,
  and a scheduled `baldflow cycle` killed mid-round: the next import or cycle finishes the round,
  and the killed flow runs are marked Crashed.
- An uninterrupted campaign passes exactly the listed points (simulated and file oracles).
- The consistency checks themselves, on a real campaign and on copies broken on purpose.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from helpers import run_flow

from baldflow import faults
from baldflow.faults import (
    FAULT_ENV,
    FAULT_FILE_ENV,
    FAULT_POINTS,
    FAULT_TRACE_ENV,
    HANDOFF_POINTS,
    ROUND_POINTS,
    TRACKING_POINTS,
)
from baldflow.workspace import Workspace
from baldflow.workspace.consistency import check_campaign, check_history
from baldflow.workspace.ledger import read_ledger
from baldflow.workspace.repo import TRAILER_ROUND

pytestmark = pytest.mark.usefixtures("prefect_harness")

CAMPAIGN = "tiny"
# The one fault point outside a round: `baldflow label import` after it stored the labels and
# before it completes the round. Not in FAULT_POINTS, which lists the points of a round.
IMPORT_POINT = "import:labels-written"
# Each fault takes at most one round of the campaign (the round it stops, or the one after a
# point that comes after the commit), so this many rounds cover every chain below.
REFERENCE_ROUNDS = len(ROUND_POINTS) + 1
# Bound for one CLI process on a busy 2-core machine (imports, Prefect, a few rounds).
CLI_TIMEOUT_S = 300


# ---------------------------------------------------------------------------- helpers
def params_with(base: dict, rounds: int, **sections: dict) -> dict:
    params = {key: dict(value) for key, value in base.items()}
    params["campaign"]["rounds"] = rounds
    for section, values in sections.items():
        params[section] = {**params.get(section, {}), **values}
    return params


def next_round(workspace: Path, campaign: str = CAMPAIGN) -> int:
    """The round a run would do next: the last round commit's + 1, tagged or not yet.

    A process killed between commit and tag leaves the round complete (the next run tags it),
    so the tags alone would name a round that never runs again.
    """
    if not Workspace.is_workspace(workspace):
        return 0
    body = Workspace(workspace).git("log", "-1", "--format=%B", "--", f"data/{campaign}")
    for line in body.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == TRAILER_ROUND:
            return int(value) + 1
    return 0


def run_cli(args: list, api: str, log: Path, **fault_env: str) -> int:
    """`python -m baldflow.cli ARGS` in a new interpreter; its exit status."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "baldflow.cli", *(str(a) for a in args)],
            env=cli_env(api, **fault_env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            return proc.wait(timeout=CLI_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def cli_env(api: str, **fault_env: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (FAULT_ENV, FAULT_FILE_ENV)}
    env.pop(FAULT_TRACE_ENV, None)
    env.update(fault_env, PREFECT_API_URL=api)
    return env


# A fork server: one interpreter imports what `baldflow` commands import lazily (torch, Prefect,
# MLflow, DVC: seconds per process), then forks a child per command that runs
# baldflow.cli.main. Each child is a real process, and a fault kills it with a real SIGKILL;
# only the imports are shared. The kill chain starts one process per fault point, so this
# is most of what keeps this module within the suite's time. Nothing runs in the server
# between forks, so no thread holds a lock when it forks (it checks).
_FORK_SERVER = r"""
import importlib, json, os, pkgutil, sys, threading
# Answers go to a copy of stdout; anything else printed goes to stderr, not into them.
answers = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
import baldflow
from baldflow import cli
# What a round imports on first use, beyond what `import baldflow.flows.campaign` does. A
# module that fails to import is skipped: this only buys speed, and a child that needs it
# fails on its own.
names = [m.name for m in pkgutil.walk_packages(baldflow.__path__, "baldflow.", lambda n: None)]
for name in (
    *[n for n in names if not n.endswith("__main__")],
    "baldflow.flows.campaign", "baldflow.flows.cycle", "sklearn.datasets", "matplotlib.pyplot",
    "matplotlib.backends.backend_agg", "mlflow.tracking", "mlflow.store.tracking.sqlalchemy_store",
    "alembic.command", "alembic.config", "sqlalchemy.dialects.sqlite", "dvc.api", "dvc.repo",
    "dvc.repo.index", "dvc.repo.plots", "dvc.repo.worktree", "dvc.data_cloud",
    "dvc_data.index.push", "dvc_data.index.checkout", "PIL.Image", "sympy", "networkx",
    "torch._dynamo", "anyio._backends._asyncio", "prefect.flow_engine", "prefect.task_engine",
    "graphviz", "ruamel.yaml",
):
    try:
        importlib.import_module(name)
    except Exception:
        pass


def answer(**fields):
    print(json.dumps(fields), file=answers, flush=True)


# Forking copies a thread's locks but not the thread: only a single-threaded server forks.
answer(ready=os.getpid(), threads=threading.active_count())
for line in sys.stdin:
    request = json.loads(line)
    if threading.active_count() != 1:
        answer(error=f"{threading.active_count()} threads")
        continue
    pid = os.fork()
    if pid == 0:
        answers.close()
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["baldflow", *request["argv"]]
        # Leaves the loop and exits as `python -m baldflow.cli` does, atexit hooks included.
        sys.exit(cli.main(request["argv"]))
    answer(pid=pid)
    _, status = os.waitpid(pid, 0)
    answer(returncode=os.waitstatus_to_exitcode(status))
"""


class ForkServer:
    """Runs `baldflow` commands as forked children of a preloaded interpreter."""

    def __init__(self, api: str, log: Path):
        self.api = api
        self._errors = log.open("w")
        env = cli_env(api)
        # What `baldflow run` sets before importing Prefect, which reads it at import.
        env.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL", "WARNING")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _FORK_SERVER],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._errors,
            bufsize=0,
        )
        self._buffer = b""
        ready = self._reply(CLI_TIMEOUT_S)
        # An import that starts a thread would make forking unsafe: then every command runs
        # in a fresh interpreter instead, slower but the same test.
        self.forks = ready["threads"] == 1

    def _reply(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(left, 0))
            if not ready:
                raise TimeoutError(f"no answer from the fork server in {timeout} s")
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError("the fork server exited")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def run(self, args: list, log: Path, **fault_env: str) -> int:
        """`baldflow ARGS` in a child; its exit status (-9 when SIGKILLed)."""
        if not self.forks:
            return run_cli(args, self.api, log, **fault_env)
        request = {
            "argv": [str(a) for a in args],
            "env": cli_env(self.api, **fault_env),
            "log": str(log),
        }
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        started = self._reply(30)
        if "error" in started:
            raise RuntimeError(f"fork server refused: {started['error']}")
        try:
            return self._reply(CLI_TIMEOUT_S)["returncode"]
        except TimeoutError:
            os.kill(started["pid"], signal.SIGKILL)
            self._reply(30)
            raise

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._errors.close()


@pytest.fixture(scope="module")
def cli(tmp_path_factory, prefect_harness):
    server = ForkServer(prefect_harness, tmp_path_factory.mktemp("fork-server") / "errors.log")
    yield server
    server.close()


def tail(log: Path, chars: int = 4000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else ""


def trace_of(path: Path) -> list[tuple[str, int]]:
    """The points a process passed, in order, as (point, round)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().split():
        point, _, round_index = line.rpartition(":")
        out.append((point, int(round_index)))
    return out


def acquisitions(workspace: Path, campaign: str = CAMPAIGN) -> list[tuple[int, str, int]]:
    return [(r.round, r.sample_id, r.label) for r in Workspace(workspace).ledger(campaign)]


def up_to(rows: list[tuple[int, str, int]], last_round: int) -> list[tuple[int, str, int]]:
    return [row for row in rows if row[0] <= last_round]


def flow_run_states(api: str, workspace: Path) -> list[str]:
    """State types of the campaign and cycle flow runs on a workspace, oldest first."""
    response = httpx.post(
        f"{api}/flow_runs/filter",
        json={
            "flows": {"name": {"any_": ["baldflow-campaign", "baldflow-cycle"]}},
            "sort": "EXPECTED_START_TIME_ASC",
            "limit": 200,
            "offset": 0,
        },
        timeout=30,
    )
    response.raise_for_status()
    here = workspace.resolve()
    return [
        run["state_type"]
        for run in response.json()
        if Path(str(run["parameters"].get("workspace", ""))).resolve() == here
    ]


def write_labels(path: Path, truth: dict[str, int], sample_ids: list[str]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample_id", "label"])
        for sid in sample_ids:
            writer.writerow([sid, truth[sid]])
    return path


def run_with_faults(workspace: Path, params: dict, **fault_env: str):
    """The campaign flow in this process, with fault variables set only for this call."""
    faults._raised.clear()
    env = {**dict.fromkeys((FAULT_ENV, FAULT_FILE_ENV, FAULT_TRACE_ENV)), **fault_env}
    try:
        return run_flow(workspace, params, campaign="faults", env=env)
    finally:
        faults._raised.clear()


# ---------------------------------------------------------------------------- reference
@dataclasses.dataclass
class Reference:
    workspace: Path
    rows: list[tuple[int, str, int]]
    trace: list[tuple[str, int]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, prefect_harness, tiny_defaults) -> Reference:
    """One uninterrupted campaign, long enough for every chain, run with a fault trace."""
    root = tmp_path_factory.mktemp("reference")
    trace = root / "trace"
    run_with_faults(
        root / "ws",
        params_with(tiny_defaults, REFERENCE_ROUNDS),
        **{FAULT_TRACE_ENV: str(trace)},
    )
    return Reference(root / "ws", acquisitions(root / "ws"), trace_of(trace))


def test_an_uninterrupted_round_passes_exactly_the_listed_points_in_order(reference):
    unknown = sorted({p for p, _ in reference.trace} - set(FAULT_POINTS))
    assert not unknown, f"points passed but not listed in baldflow.faults: {unknown}"
    for round_index in range(1, REFERENCE_ROUNDS + 1):
        passed = [p for p, r in reference.trace if r == round_index]
        assert passed == list(ROUND_POINTS), f"round {round_index}"


def test_the_reference_campaign_is_consistent(reference):
    assert check_campaign(reference.workspace, CAMPAIGN) == []
    assert check_history(reference.workspace, CAMPAIGN) == []
    assert max(r for r, _, _ in reference.rows) == REFERENCE_ROUNDS


# ---------------------------------------------------------------------------- chains
@dataclasses.dataclass
class Stop:
    """What one faulted run did."""

    point: str
    round: int
    passed: list[tuple[str, int]]
    history: list[str]
    returncode: int | None = None
    output: str = ""
    error: str | None = None
    rerun_error: str | None = None
    problems: list[str] | None = None
    rows: list[tuple[int, str, int]] | None = None


@dataclasses.dataclass
class Chain:
    """Faults one after another in one workspace, then a run without a fault, checked."""

    workspace: Path
    stops: dict[str, Stop]
    last_round: int
    rerun: str | None
    problems: list[str]
    rows: list[tuple[int, str, int]]
    states: list[str]

    def by_round(self) -> dict[int, list[str]]:
        """Which faults each round went through: tells which point a problem comes from."""
        out: dict[int, list[str]] = {}
        for stop in self.stops.values():
            out.setdefault(stop.round, []).append(stop.point)
        return out


def truth_of(params: dict) -> dict[str, int]:
    """Every pool sample's true label: what people would answer."""
    from baldflow.compute import campaign_data
    from baldflow.config import validate

    data = campaign_data.prepare_data(validate(params))
    return dict(zip(data.splits.pool_ids, data.splits.pool_y.tolist(), strict=True))


def label_waiting_batch(workspace: Path, truth: dict[str, int], *, complete: bool) -> bool:
    """Import people's labels for the batch waiting for them; False if none is waiting.

    With complete=False the labels are only stored (`--no-complete`), as when people answer
    and the next run or cycle finishes the round.
    """
    from baldflow.cli import main
    from baldflow.labeling import HandOff

    handoff = HandOff(Workspace(workspace).campaign_dir(CAMPAIGN), CAMPAIGN)
    pending = handoff.pending()
    if pending is None or handoff.is_complete(pending):
        return False
    sheet = write_labels(
        workspace.parent / f"labels-{pending.round}.csv", truth, pending.sample_ids
    )
    args = ["label", "import", str(sheet), "-w", str(workspace), "--by", "ann"]
    assert main(args + ([] if complete else ["--no-complete"])) == 0
    return True


def kill_chain_in(
    root: Path,
    workspace: Path,
    params: dict,
    points: tuple[str, ...],
    cli: ForkServer,
    api: str,
    truth: dict[str, int] | None = None,
) -> Chain:
    """Each point in turn: a `baldflow run` killed there. The process killed at a point is also
    the rerun after the kill before it."""
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    stops: dict[str, Stop] = {}
    for index, point in enumerate(points):
        # Round 0 has no acquisition steps: every point is aimed at an acquisition round.
        target = max(next_round(workspace), 1)
        trace, log = root / f"trace-{index:02d}", root / f"run-{index:02d}.log"
        # campaign.rounds = target: a point that is never reached ends the process after that
        # round instead of running the whole campaign.
        command = ["run", "--workspace", workspace, "--config", params_file]
        command += ["--set", f"campaign.rounds={target}"]
        fault = {FAULT_ENV: f"{point}:{target}:kill", FAULT_TRACE_ENV: str(trace)}
        code = cli.run(command, log, **fault)
        if (
            code == 0
            and truth is not None
            and label_waiting_batch(workspace, truth, complete=False)
        ):
            # The round waited for people's labels before reaching the point: they answer.
            code = cli.run(command, log, **fault)
        stops[point] = Stop(
            point,
            target,
            trace_of(trace),
            check_history(workspace, CAMPAIGN),
            returncode=code,
            output=tail(log),
        )
    # The rerun completes every round a kill stopped, and nothing more: a fresh interpreter
    # running the installed module, as a user would.
    last = max(stop.round for stop in stops.values())
    log = root / "rerun.log"
    code = run_cli(
        ["run", "--workspace", workspace, "--config", params_file]
        + ["--set", f"campaign.rounds={last}"],
        api,
        log,
    )
    return Chain(
        workspace,
        stops,
        last,
        None if code == 0 else f"exit status {code}:\n{tail(log)}",
        check_campaign(workspace, CAMPAIGN),
        acquisitions(workspace),
        flow_run_states(api, workspace),
    )


def check_kill(chain: Chain, point: str) -> None:
    stop = chain.stops[point]
    assert stop.returncode == -signal.SIGKILL, f"not killed at {point}:\n{stop.output}"
    assert stop.passed[-1] == (point, stop.round), "killed elsewhere than asked"
    assert stop.history == []


def check_chain_end(chain: Chain, reference: Reference) -> None:
    assert chain.rerun is None
    assert chain.problems == [], f"faults per round: {chain.by_round()}"
    assert chain.rows == up_to(reference.rows, chain.last_round), chain.by_round()


# ---------------------------------------------------------------------------- SIGKILL
@pytest.fixture(scope="module")
def kill_chain(tmp_path_factory, prefect_harness, tiny_defaults, cli) -> Chain:
    root = tmp_path_factory.mktemp("kill-chain")
    return kill_chain_in(root, root / "ws", tiny_defaults, ROUND_POINTS, cli, prefect_harness)


@pytest.mark.parametrize("point", ROUND_POINTS)
def test_sigkill_at_each_point_leaves_the_committed_history_intact(kill_chain, point):
    check_kill(kill_chain, point)


def test_after_every_kill_a_rerun_is_consistent_and_acquires_as_if_never_killed(
    kill_chain, reference
):
    check_chain_end(kill_chain, reference)
    # Every killed flow run was marked Crashed by the run after it; none looks alive.
    killed = sum(s.returncode == -signal.SIGKILL for s in kill_chain.stops.values())
    finished = len(kill_chain.states) - killed
    assert sorted(kill_chain.states) == sorted(["COMPLETED"] * finished + ["CRASHED"] * killed)


@pytest.fixture(scope="module")
def handoff_kill_chain(tmp_path_factory, prefect_harness, tiny_defaults, cli) -> Chain:
    """The hand-off points killed in turn: round 1 of a campaign labeled by people."""
    root = tmp_path_factory.mktemp("handoff-kill-chain")
    workspace = root / "ws"
    params = params_with(tiny_defaults, 0, oracle={"kind": "file"})
    truth = truth_of(params)
    run_with_faults(workspace, params)  # round 0 handed off ...
    assert label_waiting_batch(workspace, truth, complete=True)  # ... and labeled
    return kill_chain_in(root, workspace, params, HANDOFF_POINTS, cli, prefect_harness, truth)


@pytest.mark.parametrize("point", HANDOFF_POINTS)
def test_sigkill_at_each_handoff_point_leaves_the_committed_history_intact(
    handoff_kill_chain, point
):
    check_kill(handoff_kill_chain, point)


def test_after_the_handoff_kills_a_rerun_completes_the_round_as_if_never_killed(
    handoff_kill_chain, reference
):
    check_chain_end(handoff_kill_chain, reference)
    assert "CRASHED" in handoff_kill_chain.states
    assert not {"RUNNING", "PENDING"} & set(handoff_kill_chain.states)


# ---------------------------------------------------------------------------- exceptions
def exception_chain(
    root: Path, base: dict, action: str, points: tuple[str, ...] = ROUND_POINTS
) -> Chain:
    """Each point in turn: the flow, in this process, raises InjectedFault there.

    `raise` fires once, so a task's retry may get through; then the campaign runs again
    without the fault if it stopped, and everything is checked after every point. `fail`
    fires on every attempt, so the run stops at the point unless a retry need not pass it
    again; the run at the next point is also the rerun, and everything is checked at the end.
    """
    workspace = root / "ws"
    stops: dict[str, Stop] = {}
    for index, point in enumerate(points):
        target = max(next_round(workspace), 1)
        params = params_with(base, target)
        trace = root / f"trace-{index:02d}"
        error = None
        try:
            run_with_faults(
                workspace,
                params,
                **{FAULT_ENV: f"{point}:{target}:{action}", FAULT_TRACE_ENV: str(trace)},
            )
        except Exception as exc:  # noqa: BLE001 (any error the fault causes is recorded)
            error = f"{type(exc).__name__}: {exc}"
        stop = Stop(point, target, trace_of(trace), check_history(workspace, CAMPAIGN))
        stop.error = error
        stops[point] = stop
        if action == "fail":
            continue
        if error is not None:
            # The run stopped: run again without the fault, as a user would.
            try:
                run_with_faults(workspace, params)
            except Exception as exc:  # noqa: BLE001
                stop.rerun_error = f"{type(exc).__name__}: {exc}"
        stop.problems = check_campaign(workspace, CAMPAIGN)
        stop.rows = acquisitions(workspace)
    last = max(stop.round for stop in stops.values())
    rerun = None
    try:
        run_with_faults(workspace, params_with(base, last))
    except Exception as exc:  # noqa: BLE001
        rerun = f"{type(exc).__name__}: {exc}"
    return Chain(
        workspace,
        stops,
        last,
        rerun,
        check_campaign(workspace, CAMPAIGN),
        acquisitions(workspace),
        [],
    )


@pytest.fixture(scope="module")
def exception_chains(tmp_path_factory, prefect_harness, tiny_defaults):
    """The chain of each action, run in this process when a test first asks for it."""
    done: dict[str, Chain] = {}

    def chain(action: str) -> Chain:
        if action not in done:
            root = tmp_path_factory.mktemp(f"{action}-chain")
            points = TRACKING_POINTS if action == "forbid" else ROUND_POINTS
            done[action] = exception_chain(root, tiny_defaults, action, points)
        return done[action]

    return chain


# `fail` stops the run at every point where `raise` is absorbed by a task's retry, so it
# exercises the error paths (runs marked FAILED, then repaired from git) at every point. It
# adds about a minute, beyond what the suite can spend here: run it with
# BALDFLOW_TEST_FAIL_CHAIN=1 after changing the flow's error handling or retries.
needs_fail_chain = pytest.mark.skipif(
    os.environ.get("BALDFLOW_TEST_FAIL_CHAIN") != "1",
    reason="the `fail` chain runs with BALDFLOW_TEST_FAIL_CHAIN=1 (about a minute)",
)


def check_stopped_at(stop: Stop, point: str) -> None:
    assert (point, stop.round) in stop.passed, f"{point} of round {stop.round} never reached"
    # An error other than the injected one: a retry or the error path tripped over what the
    # failed attempt had done.
    assert stop.error is None or f"fault injected at {point} " in stop.error, stop.error
    assert stop.history == [], stop.error


@pytest.mark.parametrize("point", ROUND_POINTS)
def test_an_exception_at_each_point_then_a_rerun_leaves_a_consistent_campaign(
    exception_chains, reference, point
):
    stop = exception_chains("raise").stops[point]
    check_stopped_at(stop, point)
    assert stop.rerun_error is None, f"first run: {stop.error}"
    assert stop.problems == [], f"first run: {stop.error}"
    assert stop.rows == up_to(reference.rows, stop.round), f"first run: {stop.error}"


@pytest.mark.parametrize("point", TRACKING_POINTS)
def test_a_403_at_each_tracking_point_fails_the_round_and_the_next_run_repairs_it(
    exception_chains, reference, point
):
    """The tracking server refuses the login (HTTP 403, every retry) at each point inside
    MLflow tracking: the round stops with nothing half-committed, and the next run, with the
    permission back, completes what git committed and acquires as if never refused."""
    stop = exception_chains("forbid").stops[point]
    check_stopped_at(stop, point)
    assert stop.error is not None and "403" in stop.error, stop.error
    assert stop.rerun_error is None, f"first run: {stop.error}"
    assert stop.problems == [], f"first run: {stop.error}"
    assert stop.rows == up_to(reference.rows, stop.round), f"first run: {stop.error}"


@needs_fail_chain
@pytest.mark.parametrize("point", ROUND_POINTS)
def test_an_error_that_retries_cannot_get_past_at_each_point_leaves_the_history_intact(
    exception_chains, point
):
    check_stopped_at(exception_chains("fail").stops[point], point)


@needs_fail_chain
def test_after_every_failed_run_a_rerun_is_consistent_and_acquires_as_if_never_failed(
    exception_chains, reference
):
    check_chain_end(exception_chains("fail"), reference)


# ---------------------------------------------------------------------------- people, cycles
@dataclasses.dataclass
class Handoff:
    root: Path
    workspace: Path
    params: dict
    truth: dict[str, int]
    trace: list[tuple[str, int]]
    import_codes: list[int]
    # check_campaign while each round's batch was with people.
    waiting: list[list[str]]


@pytest.fixture(scope="module")
def people(tmp_path_factory, prefect_harness, tiny_defaults) -> Handoff:
    """Rounds 0 and 1 labeled by people through the file hand-off, with a fault trace."""
    from baldflow.cli import main
    from baldflow.labeling import HandOff

    root = tmp_path_factory.mktemp("people")
    workspace = root / "ws"
    params = params_with(tiny_defaults, 1, oracle={"kind": "file"})
    truth = truth_of(params)
    handoff = HandOff(Workspace(workspace).campaign_dir(CAMPAIGN), CAMPAIGN)
    trace = root / "trace"
    codes, waiting = [], []
    for round_index in (0, 1):
        # The run hands the batch off and stops; the import completes the round.
        run_with_faults(workspace, params, **{FAULT_TRACE_ENV: str(trace)})
        pending = handoff.pending()
        assert pending is not None and pending.round == round_index
        waiting.append(check_campaign(workspace, CAMPAIGN))
        labels = write_labels(root / f"labels-{round_index}.csv", truth, pending.sample_ids)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(FAULT_TRACE_ENV, str(trace))
            codes.append(main(["label", "import", str(labels), "-w", str(workspace)]))
    return Handoff(root, workspace, params, truth, trace_of(trace), codes, waiting)


def test_a_round_labeled_by_people_passes_exactly_the_round_and_handoff_points(people):
    assert people.import_codes == [0, 0]
    passed = {p for p, _ in people.trace}
    assert passed - {IMPORT_POINT} <= set(FAULT_POINTS), "points not listed in baldflow.faults"
    round1 = [p for p, r in people.trace if r == 1]
    assert set(round1) == set(ROUND_POINTS) | set(HANDOFF_POINTS) | {IMPORT_POINT}
    in_order = [p for p in round1 if p in ROUND_POINTS]
    assert in_order == list(ROUND_POINTS)
    assert check_campaign(people.workspace, CAMPAIGN) == []
    # A batch waiting for labels is a consistent state, round 0's included.
    assert people.waiting == [[], []]


def test_label_import_killed_mid_import_then_again_loses_and_doubles_no_label(
    people, prefect_harness, reference, cli
):
    from baldflow.cli import main
    from baldflow.labeling import HandOff

    workspace = people.workspace
    handoff = HandOff(Workspace(workspace).campaign_dir(CAMPAIGN), CAMPAIGN)
    params = params_with(people.params, 2)
    run_with_faults(workspace, params)
    pending = handoff.pending()
    assert pending is not None and pending.round == 2
    labels = write_labels(people.root / "labels-2.csv", people.truth, pending.sample_ids)
    command = ["label", "import", labels, "-w", workspace, "--by", "ann"]

    # Killed right after the labels were stored, before the round is completed.
    log = people.root / "import-1.log"
    code = cli.run(command, log, **{FAULT_ENV: f"{IMPORT_POINT}:2:kill"})
    assert code == -signal.SIGKILL, tail(log)
    stored = handoff.imported(2)
    assert sorted(stored) == sorted(pending.sample_ids)
    assert Workspace(workspace).completed_rounds(CAMPAIGN) == [0, 1]
    # Imported again, and killed while completing the round, between its commit and its tag.
    log = people.root / "import-2.log"
    code = cli.run(command, log, **{FAULT_ENV: "version:committed:2:kill"})
    assert code == -signal.SIGKILL, tail(log)
    assert check_history(workspace, CAMPAIGN) == []
    # Imported a third time: the round completes once, with every label once.
    assert main([str(a) for a in command]) == 0

    ledger = read_ledger(Workspace(workspace).ledger_path(CAMPAIGN))
    round2 = [r for r in ledger if r.round == 2]
    assert [r.sample_id for r in round2] == pending.sample_ids
    assert all(r.label == people.truth[r.sample_id] for r in round2)
    assert all(r.labeled_by == "ann via labels-2.csv" for r in round2)
    assert check_campaign(workspace, CAMPAIGN) == []
    assert acquisitions(workspace) == up_to(reference.rows, 2)
    states = flow_run_states(prefect_harness, workspace)
    assert states.count("CRASHED") == 1 and set(states) == {"COMPLETED", "CRASHED"}


def test_a_cycle_killed_mid_round_is_crashed_and_the_next_cycle_resumes(
    tmp_path, tiny_params, prefect_harness, reference
):
    from baldflow.cli import main
    from baldflow.flows.cycle import cycle_flow

    workspace = tmp_path / "ws"
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_params))
    assert main(["init", str(workspace), "--config", str(params_file)]) == 0
    cycle_flow(workspace=str(workspace))
    assert Workspace(workspace).completed_rounds(CAMPAIGN) == [0]
    # Killed with round 1's labels staged in git but not committed.
    log = tmp_path / "cycle.log"
    code = run_cli(
        ["cycle", "-w", workspace], prefect_harness, log, **{FAULT_ENV: "version:git-added:1:kill"}
    )
    assert code == -signal.SIGKILL, tail(log)
    assert flow_run_states(prefect_harness, workspace) == ["COMPLETED", "RUNNING"]
    assert check_history(workspace, CAMPAIGN) == []

    cycle_flow(workspace=str(workspace))
    assert Workspace(workspace).completed_rounds(CAMPAIGN) == [0, 1]
    assert flow_run_states(prefect_harness, workspace) == ["COMPLETED", "CRASHED", "COMPLETED"]
    assert check_campaign(workspace, CAMPAIGN) == []
    assert acquisitions(workspace) == up_to(reference.rows, 1)


# ---------------------------------------------------------------------------- the checks
def _edit_ledger_label(ws: Workspace) -> None:
    path = ws.ledger_path(CAMPAIGN)
    records = list(csv.DictReader(io.StringIO(path.read_text())))
    row = next(r for r in records if r["round"] == "1")
    row["label"] = str((int(row["label"]) + 1) % 10)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    path.write_text(buffer.getvalue())


def _repeat_a_sample(ws: Workspace) -> None:
    path = ws.ledger_path(CAMPAIGN)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines) + lines[-1])


def _drop_a_labeled_row(ws: Workspace) -> None:
    path = ws.labeled_path(CAMPAIGN)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))


def _delete_a_tag(ws: Workspace) -> None:
    ws.git("tag", "-d", f"{CAMPAIGN}/round-0003")


def _leave_a_run_running(ws: Workspace) -> None:
    from mlflow.tracking import MlflowClient

    from baldflow.workspace.tracking import local_tracking_uri

    client = MlflowClient(tracking_uri=local_tracking_uri(ws.mlflow_dir))
    experiment = client.get_experiment_by_name("baldflow")
    (run,) = client.search_runs(
        [experiment.experiment_id],
        "tags.`baldflow.kind` = 'round' and tags.`baldflow.round` = '2'",
    )
    client.update_run(run.info.run_id, status="RUNNING")


def _leave_a_pending_batch(ws: Workspace) -> None:
    folder = ws.campaign_dir(CAMPAIGN) / "to-label"
    folder.mkdir()
    (folder / ".gitignore").write_text("*\n")
    (folder / "round-0002.pending.json").write_text("{}")


BREAKAGES = {
    "ledger hand-edited": (_edit_ledger_label, "differs from the ledger"),
    "a sample twice": (_repeat_a_sample, "more than once"),
    "labeled.csv hand-edited": (_drop_a_labeled_row, "labeled.csv differs from the ledger"),
    "tag deleted": (_delete_a_tag, "not contiguous from round 0"),
    "run left RUNNING": (_leave_a_run_running, "still RUNNING"),
    "pending batch of a committed round": (_leave_a_pending_batch, "a pending batch of round 2"),
}


def broken_copy(reference: Reference, tmp_path: Path, breakage: str) -> Path:
    copy = tmp_path / "ws"
    shutil.copytree(reference.workspace, copy, symlinks=True)
    BREAKAGES[breakage][0](Workspace(copy))
    return copy


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_the_checks_detect_a_broken_workspace(reference, tmp_path, breakage):
    problems = check_campaign(broken_copy(reference, tmp_path, breakage), CAMPAIGN)
    expected = BREAKAGES[breakage][1]
    assert any(expected in p for p in problems), problems


def test_verify_exits_0_when_consistent_and_1_with_the_problems_listed(reference, tmp_path, capsys):
    from baldflow.cli import main

    assert main(["verify", "-w", str(reference.workspace)]) == 0
    assert capsys.readouterr().out.strip() == f"{CAMPAIGN}: consistent"
    copy = broken_copy(reference, tmp_path, "run left RUNNING")
    assert main(["verify", "-w", str(copy), "--campaign", CAMPAIGN]) == 1
    out = capsys.readouterr().out
    assert f"{CAMPAIGN}: 2 problem(s)" in out and "still RUNNING" in out
    assert main(["verify", "-w", str(reference.workspace), "--campaign", "nope"]) == 1
    assert "campaign 'nope' is not in" in capsys.readouterr().out
    assert main(["verify", "-w", str(tmp_path / "nothing")]) == 1
