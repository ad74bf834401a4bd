"""The project's task decorator: every task is made by it, and it owns caching, retries, the
quoting of arguments and the fault points at a task's ends. No Prefect server is needed."""

from __future__ import annotations

import pytest

from baldflow import tasks
from baldflow.faults import FAULT_POINTS, FAULT_TRACE_ENV
from baldflow.tasks.base import STORE, BaldflowTask, baldflow_task, quoted


def _all_tasks() -> list[BaldflowTask]:
    import importlib
    import pkgutil

    found = {}
    for module in pkgutil.iter_modules(tasks.__path__):
        loaded = importlib.import_module(f"baldflow.tasks.{module.name}")
        for value in vars(loaded).values():
            if hasattr(value, "task_key"):
                found[value.name] = value
    return list(found.values())


def test_every_task_is_made_by_the_project_decorator_and_caches_nothing():
    from prefect.cache_policies import NO_CACHE

    made = _all_tasks()
    assert len(made) >= 30
    for task in made:
        assert isinstance(task, BaldflowTask), task.name
        assert task.cache_policy is NO_CACHE, task.name


def test_plain_values_pass_as_they_are_and_the_rest_is_quoted():
    from prefect.utilities.annotations import quote

    for plain in ("a", 3, 2.5, True, None):
        assert quoted(plain) is plain
    pool = {"rows": list(range(5))}
    assert isinstance(quoted(pool), quote) and quoted(pool).unwrap() is pool
    already = quote([1])
    assert quoted(already) is already


def test_fault_points_sit_at_the_ends_of_the_task_body(tmp_path, monkeypatch):
    trace = tmp_path / "trace"
    monkeypatch.setenv(FAULT_TRACE_ENV, str(trace))
    calls = []

    @baldflow_task("version-round", retry=STORE, fault_before=True, fault_after=True)
    def versioned(value: int, round_index: int) -> int:
        calls.append(trace.read_text().splitlines())
        return value + 1

    assert versioned.fn(1, round_index=3) == 2
    assert calls == [["version-round:before:3"]]
    assert trace.read_text().splitlines() == ["version-round:before:3", "version-round:after:3"]
    assert (versioned.retries, versioned.retry_delay_seconds) == (2, 1)


def test_every_point_a_task_declares_is_a_listed_fault_point():
    import inspect

    for task in _all_tasks():
        closure = inspect.getclosurevars(task.fn).nonlocals if task.fn.__closure__ else {}
        for key in ("before", "after"):
            point = closure.get(key)
            if point is not None:
                assert point in FAULT_POINTS, (task.name, point)


def test_a_task_with_fault_points_must_take_its_round():
    with pytest.raises(TypeError, match="round_index"):

        @baldflow_task("nowhere", fault_after=True)
        def no_round(value: int) -> int:
            return value
