"""Waiting for a pass's shard tasks, with a backup copy of a shard that straggles.

Why: on rented workers one shard can lag far behind the rest (a slow or preempted node), and a
Dask task can be lost without an error: its future never resolves and the round would wait
forever. A shard's task has no side effect but its own output file, written atomically with the
same bytes by any copy, so a second copy on another worker is always safe: once most shards are
done, a shard still running BACKUP_AFTER_MEDIANS times as long as the median shard took (and
at least BACKUP_MIN_S) is submitted again, and whichever copy finishes first is taken. A copy
that fails fails the pass, as it would without backups.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

BACKUP_AFTER_MEDIANS = 4.0
BACKUP_MIN_S = 60.0
# Backups start once this share of the shards is done (the median is then worth trusting).
BACKUP_QUORUM = 0.5
# The longest one future is asked at a time, and the pause when no shard finished in a sweep.
POLL_S = 0.05
IDLE_S = 0.5

logger = logging.getLogger("baldflow.shards")


def _logger():
    """The flow run's logger (its lines reach the Prefect UI), else this module's."""
    from prefect import get_run_logger

    try:
        return get_run_logger()
    except Exception:  # no run context: called outside a flow
        return logger


def gather(submit: Callable[[int, int], Any], ranges: list[tuple[int, int]]) -> list[Any]:
    """The results of the shards over row `ranges`, in order; `submit(start, stop)` starts one
    shard's task and returns its Prefect future (`result(timeout=)` raises TimeoutError while
    it runs)."""
    count = len(ranges)
    copies = {index: [submit(*ranges[index])] for index in range(count)}
    started = {index: time.monotonic() for index in range(count)}
    took: list[float] = []
    results: dict[int, Any] = {}
    while len(results) < count:
        finished_any = False
        for index in [i for i in range(count) if i not in results]:
            for future in copies[index]:
                try:
                    results[index] = future.result(timeout=POLL_S)
                except TimeoutError:
                    continue
                took.append(time.monotonic() - started[index])
                finished_any = True
                break
        if len(results) < count and len(took) >= max(1, BACKUP_QUORUM * count):
            _back_up_stragglers(submit, ranges, copies, started, took, results)
        if not finished_any:
            time.sleep(IDLE_S)
    return [results[index] for index in range(count)]


def _back_up_stragglers(submit, ranges, copies, started, took, results) -> None:
    limit = max(BACKUP_MIN_S, BACKUP_AFTER_MEDIANS * statistics.median(took))
    now = time.monotonic()
    for index, futures in copies.items():
        # One backup per shard: a shard that straggles on two workers is slow, not lost.
        if index in results or len(futures) > 1 or now - started[index] < limit:
            continue
        start, stop = ranges[index]
        _logger().warning(
            "shard of rows %d-%d still running after %.0f s (the median shard took %.1f s): "
            "a second copy is submitted, the first to finish is taken",
            start, stop, now - started[index], statistics.median(took),
        )  # fmt: skip
        futures.append(submit(start, stop))
