"""The one decorator every baldflow task is made with, and the retry policies it offers.

It owns what each task module used to repeat: no result caching (tasks get models, pools
and workspaces, which Prefect would hash), a named retry policy, the fault points a task
passes at its start and end (baldflow.faults), and the quoting of arguments that are not
plain values, so that Prefect hands a pool or a model to the task as it is instead of walking
it for futures on every call.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple, ParamSpec, TypeVar

from prefect import Task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.states import State
from prefect.utilities.annotations import BaseAnnotation, quote

from baldflow.faults import fault_point

P = ParamSpec("P")
R = TypeVar("R")


class Retry(NamedTuple):
    retries: int
    delay_seconds: float


# Compute (training, scoring, selection): a failure is a bug or bad parameters, and running
# it again only costs time.
NO_RETRY = Retry(0, 0)
# Files of this machine written atomically (hand-off, scratch, workspace repair): a second
# attempt writes the same bytes, and may get past a file a neighbour was still writing.
LOCAL_FILES = Retry(1, 1)
# MLflow's SQLite store, git and DVC of the workspace, an oracle reading shared files: briefly
# locked by background work, free a second later.
STORE = Retry(2, 1)
# A git or DVC remote that does not answer may be back two seconds later.
REMOTE = Retry(2, 2)
# The Label Studio server over HTTP.
LABEL_STUDIO = Retry(1, 2)

_PLAIN = (str, int, float, bool, type(None))


def _passed_as_is(value: Any) -> bool:
    """Values Prefect may look into: plain scalars (task run names are formatted from them),
    futures and states (which it must resolve) and values already annotated."""
    return isinstance(value, (*_PLAIN, PrefectFuture, State, BaseAnnotation))


def quoted(value: Any) -> Any:
    return value if _passed_as_is(value) else quote(value)


class BaldflowTask(Task[P, R]):
    """A Prefect task whose direct call quotes every argument that is not a plain value.

    Only the call quotes: `submit` (the Dask shards) passes its small arguments as given, and
    `with_options` returns a plain Prefect task.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return_state = kwargs.pop("return_state", False)
        wait_for = kwargs.pop("wait_for", None)
        return super().__call__(
            *(quoted(arg) for arg in args),
            return_state=return_state,
            wait_for=wait_for,
            **{key: quoted(value) for key, value in kwargs.items()},
        )


def _with_fault_points(fn: Callable[P, R], before: str | None, after: str | None) -> Callable[P, R]:
    """fn with fault points at its first and last statement (inside the task run, so an
    injected error meets the task's retries exactly as an error of the body would)."""
    if before is None and after is None:
        return fn
    signature = inspect.signature(fn)
    if "round_index" not in signature.parameters:
        raise TypeError(f"{fn.__qualname__}: a task with fault points takes a round_index")

    @functools.wraps(fn)
    def body(*args: P.args, **kwargs: P.kwargs) -> R:
        round_index = signature.bind(*args, **kwargs).arguments["round_index"]
        if before is not None:
            fault_point(before, round_index)
        result = fn(*args, **kwargs)
        if after is not None:
            fault_point(after, round_index)
        return result

    return body


def baldflow_task(
    name: str,
    *,
    run_name: str | None = None,
    retry: Retry = NO_RETRY,
    fault_before: bool = False,
    fault_after: bool | str = False,
) -> Callable[[Callable[P, R]], BaldflowTask[P, R]]:
    """Make a baldflow task named `name`.

    `run_name` formats the task run's name from the plain arguments (`{round_index}`).
    `fault_before`/`fault_after` add the points `<name>:before`/`<name>:after` (a string for
    `fault_after` names another point); such a task takes a `round_index`.
    """
    before = f"{name}:before" if fault_before else None
    after = f"{name}:after" if fault_after is True else (fault_after or None)

    # Prefect's own default applies where a task never retries, as with a bare @task.
    retrying = (
        {"retries": retry.retries, "retry_delay_seconds": retry.delay_seconds}
        if retry.retries
        else {}
    )

    def make(fn: Callable[P, R]) -> BaldflowTask[P, R]:
        made = BaldflowTask(
            fn=_with_fault_points(fn, before, after),
            name=name,
            task_run_name=run_name,
            cache_policy=NO_CACHE,
            **retrying,
        )
        # Keyed by the task's own code, not by the shared wrapper around it.
        made.task_key = _task_key(fn)
        return made

    return make


def _task_key(fn: Callable[..., Any]) -> str:
    from prefect.tasks import _generate_task_key

    return _generate_task_key(fn)
