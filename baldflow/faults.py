"""Fault injection at named points of a round, for the crash tests and the soak benchmark.

Every place where a round can stop (between two tasks, inside versioning, tracking and the
hand-off) calls `fault_point(name, round)`. A task's own points, `<task>:before` and
`<task>:after` at the first and last statement of its run, are declared on its decorator
(`baldflow.tasks.base.baldflow_task`); the points inside a step are called where they stand.
Unset, it does nothing. With

    BALDFLOW_FAULT=<point>:<round>:<action>     action: kill | raise | fail | forbid | pause

the process SIGKILLs itself (`kill`), raises InjectedFault (`raise`: once per process, so a
task retry gets through; `fail`: every time, so retries fail too), raises what MLflow's client
raises for an HTTP 403 every time (`forbid`: the login lost its permission on the tracking
server) or pauses there (`pause`: it writes BALDFLOW_FAULT_FILE and waits until <file>.release
exists, so a test can kill it from outside or let it go on). BALDFLOW_FAULT_TRACE=<path>
appends every point reached as "<point>:<round>" to that file, which is how the tests check
that FAULT_POINTS lists every point a round really passes.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

FAULT_ENV = "BALDFLOW_FAULT"
FAULT_FILE_ENV = "BALDFLOW_FAULT_FILE"
FAULT_TRACE_ENV = "BALDFLOW_FAULT_TRACE"
ACTIONS = ("kill", "raise", "fail", "forbid", "pause")

# Every point, in the order an uninterrupted round with the simulated oracle passes them;
# HANDOFF_POINTS are passed only with the file oracle. Kept by hand on purpose: a test runs a
# campaign with a trace and fails if the code passes a point that is not listed here, or a
# listed point is never passed.
ROUND_POINTS = (
    "start-round-run:before",
    "start-round-run:after",
    "train:after",
    "evaluate:after",
    "score-pool:after",
    "select-batch:after",
    "label:after",
    "version-round:before",
    "version:labels-written",
    "version:dvc-added",
    "version:dvc-pushed",
    "version:git-added",
    "version:committed",
    "version:tagged",
    "version-round:after",
    "publish-batch:after",
    "track-round:before",
    "track:metrics-logged",
    "track:table-logged",
    "track:model-logged",
    "track-round:after",
    "clear-handoff:after",
)
HANDOFF_POINTS = (
    "save-handoff-model:after",
    "park-round-run:after",
    "hand-off-batch:after",
    "unpark-round-run:after",
    "load-handoff-model:after",
)
# The points inside MLflow tracking, where a tracking server that stops granting a login its
# permissions (HTTP 403) stops a round: the `forbid` action's points in the fault tests.
TRACKING_POINTS = (
    "start-round-run:before",
    "start-round-run:after",
    "track-round:before",
    "track:metrics-logged",
    "track:table-logged",
    "track:model-logged",
    "track-round:after",
)
# Passed only by a workspace with a git remote (team mode): between the round's commit and
# its push, which is the round's claim across clones.
REMOTE_POINTS = (
    "claim-round:before",
    "claim-round:pushed",
)
# Passed only when a round scores its pool in shards (scale.runner dask, or a pool on disk):
# after the model and labeled ids are staged for the workers, before "score-pool:after" (which
# the merge-shard-scores task passes there, where the in-process score-pool task passes it).
SHARDED_POINTS = ("stage-scoring:after",)
# Passed only with the Label Studio oracle: after a batch's tasks are imported (before what
# was sent is recorded), and after a complete batch's annotations are stored as its labels.
LABEL_STUDIO_POINTS = ("label-studio-send:imported", "label-studio-pull:stored")
FAULT_POINTS = ROUND_POINTS + HANDOFF_POINTS + REMOTE_POINTS + SHARDED_POINTS + LABEL_STUDIO_POINTS


class InjectedFault(RuntimeError):  # noqa: N818 (named for what it stands in for)
    """Raised by fault_point for the `raise` action: a stand-in for any error at that point."""


_raised: set[str] = set()


def _trace(point: str, round_index: int) -> None:
    trace = os.environ.get(FAULT_TRACE_ENV)
    if trace:
        with open(trace, "a", encoding="utf-8") as handle:
            handle.write(f"{point}:{round_index}\n")


def fault_point(point: str, round_index: int) -> None:
    """Do what BALDFLOW_FAULT asks if it names this point of this round; else nothing."""
    _trace(point, round_index)
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    target, _, action = spec.rpartition(":")
    if target != f"{point}:{round_index}":
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "raise":
        if target not in _raised:
            _raised.add(target)
            raise InjectedFault(f"fault injected at {point} of round {round_index}")
    elif action == "fail":
        raise InjectedFault(f"fault injected at {point} of round {round_index} (every time)")
    elif action == "forbid":
        from mlflow.exceptions import MlflowException

        raise MlflowException(
            f"fault injected at {point} of round {round_index}: API request failed with error "
            "code 403 != 200. Response body: 'Permission denied'",
            error_code="PERMISSION_DENIED",
        )
    elif action == "pause":
        marker = Path(os.environ[FAULT_FILE_ENV])
        marker.write_text(f"{os.getpid()}\n")
        release = marker.with_name(marker.name + ".release")
        deadline = time.monotonic() + 600
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    else:
        raise ValueError(f"{FAULT_ENV} action must be one of {', '.join(ACTIONS)}, got {action!r}")
