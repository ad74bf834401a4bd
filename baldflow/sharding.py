"""Score an on-disk pool shard by shard (on Dask workers or in a loop) and pick the batch that one
process scoring the whole pool would have picked.

Why: a pool of millions of samples does not fit one process's time budget, and sending N scores
back to a driver costs memory and network for nothing. Here each shard is scored where it runs,
reduced to its best `batch_size` candidates (`acquisition.sharded.shard_candidates`), and only
those travel back; `merge_candidates` then gives the exact batch of `select_by_id` on the pool.

What makes the sharded scores the single-process scores:
- the model: the directory format the registry already uses for a round (`state_dict.pt`, a
  `torch.save`d state_dict, and `spec.json`, the keyword arguments of `build_model`);
- the masks: one set of K consistent dropout masks, drawn from `generator_for(mask_seed,
  STREAM_SCORE)` as `steps.score_pool` does. A fresh generator with that seed gives the same
  masks on every worker and for every read block, so a row's K forward passes are the same
  whatever shard it falls in;
- the rows: `DiskPool.rows`, the same float32 values the single process reads.
Rows are batched differently (a shard starts its chunks at its own first row), so a score can in
principle differ in the last bits where a CPU kernel's result depends on the batch; the tests
check the scores and the batches are the same.

Softrank is not supported here: its weight is a score's rank in the whole pool, so the exact
method needs a second pass (every shard's scores gathered, `sorted_pool_scores`, handed back to
every shard before `shard_candidates`). `ShardJob` refuses it (at coldness 0 and inf softrank
needs no ranks and is accepted).

The job is a small frozen dataclass: it pickles as a few strings and numbers, so Dask sends it
cheaply, and a worker keeps the loaded model in a module-level cache keyed by the model
directory and its files' mtimes, so its second shard does not reload the model.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import resource
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from baldflow.acquisition.selection import MODES
from baldflow.acquisition.sharded import (
    Candidates,
    merge_candidates,
    select_by_id,
    shard_candidates,
)
from baldflow.data.ondisk import DiskPool
from baldflow.models.weights import SPEC_FILE, WEIGHTS_FILE, save_model_files

# Rows read from disk at a time: 8192 28x28 float32 rows are 26 MB, a small part of a worker's
# memory, and large enough that reading is a negligible share of the scoring time.
READ_ROWS = 8192


class ShardingError(ValueError):
    """An invalid sharded-scoring job, shard layout or model directory."""


# ------------------------------------------------------------------------------------ model
def save_model_dir(model: torch.nn.Module, directory: str | Path) -> Path:
    """Write `model`'s weights and spec in the registry's round-model layout, for a ShardJob.

    Why a directory of two files: it is what a round already leaves behind (Tracker.log_round,
    register_round_state), so a worker can score with a round's model as it was logged.
    """
    spec = getattr(model, "spec", None)
    if not isinstance(spec, dict) or "name" not in spec:
        raise ShardingError("the model has no spec (build it with baldflow.models.build_model)")
    return save_model_files(directory, model.state_dict(), spec)


def load_model_dir(directory: str | Path) -> torch.nn.Module:
    """The network saved by `save_model_dir` (or a round's logged model dir), in eval mode."""
    from baldflow.models.weights import ModelRebuildError, rebuild_model

    directory = Path(directory)
    try:
        return rebuild_model(directory / SPEC_FILE, directory / WEIGHTS_FILE)
    except FileNotFoundError as error:
        raise ShardingError(
            f"model directory {directory} needs {WEIGHTS_FILE} and {SPEC_FILE}: {error}"
        ) from error
    except ModelRebuildError as error:
        raise ShardingError(
            f"cannot rebuild the model in {directory} from {SPEC_FILE} and {WEIGHTS_FILE}: "
            f"{error}"
        ) from error


@dataclasses.dataclass
class _CachedModel:
    stamp: tuple[int, int]
    model: torch.nn.Module
    # The masks live on the model: two threads of one worker must not score with it at once.
    lock: threading.Lock


_MODELS: dict[str, _CachedModel] = {}
_MODELS_LOCK = threading.Lock()


def _model_stamp(directory: Path) -> tuple[int, int]:
    try:
        return tuple(os.stat(directory / name).st_mtime_ns for name in (WEIGHTS_FILE, SPEC_FILE))
    except FileNotFoundError as error:
        raise ShardingError(
            f"model directory {directory} needs {WEIGHTS_FILE} and {SPEC_FILE}: {error}"
        ) from error


def cached_model(directory: str | Path) -> tuple[_CachedModel, bool]:
    """This process's copy of the model in `directory`, and whether this call loaded it.

    Keyed by the resolved path and both files' mtimes: a worker scoring its second shard reuses
    the model, and a model rewritten in place (a new round) is loaded afresh.
    """
    directory = Path(directory).resolve()
    stamp = _model_stamp(directory)
    with _MODELS_LOCK:
        entry = _MODELS.get(str(directory))
        if entry is not None and entry.stamp == stamp:
            return entry, False
        entry = _CachedModel(stamp, load_model_dir(directory), threading.Lock())
        _MODELS[str(directory)] = entry
        return entry, True


# -------------------------------------------------------------------------------------- job
@dataclasses.dataclass(frozen=True)
class ShardJob:
    """Everything a worker needs to score a shard and cut its candidates; cheap to pickle.

    `model_dir`: a directory with state_dict.pt and spec.json (`save_model_dir`). `pool_dir`: a
    `DiskPool` directory. `score`: a name of `acquisition.scores.SCORES`. `mask_seed`: the
    round's scoring seed (masks from `generator_for(mask_seed, STREAM_SCORE)`). `chunk_size`:
    inputs per forward pass (None: `inference.auto_chunk_size`). `batch_size`, `mode`,
    `coldness`, `selection_seed`: the selection (`select_by_id`'s arguments). `torch_threads`:
    torch CPU threads while scoring a shard (1: one core per worker process; 0 leaves torch's
    choice).
    """

    model_dir: str
    pool_dir: str
    score: str = "bald"
    mc_samples: int = 20
    mask_seed: int = 0
    chunk_size: int | None = None
    batch_size: int = 10
    mode: str = "power"
    coldness: float = 1.0
    selection_seed: int = 0
    torch_threads: int = 1

    def __post_init__(self) -> None:
        # Paths as strings: the job pickles small and the same on every machine.
        object.__setattr__(self, "model_dir", str(self.model_dir))
        object.__setattr__(self, "pool_dir", str(self.pool_dir))
        if self.mode not in MODES:
            raise ShardingError(f"unknown mode {self.mode!r}; valid modes: {', '.join(MODES)}")
        coldness = float(self.coldness)
        if math.isnan(coldness) or coldness < 0:
            raise ShardingError(f"coldness must be >= 0 (inf allowed), got {self.coldness!r}")
        if self.mode == "softrank" and 0 < coldness < math.inf:
            raise ShardingError(
                "softrank is not supported by sharded scoring: its weight is a score's rank in "
                "the whole pool, which needs a second pass (gather every shard's scores, "
                "sorted_pool_scores, hand them to every shard's shard_candidates); use power "
                "or softmax, or select on one process"
            )
        for name in ("mc_samples", "batch_size", "torch_threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ShardingError(f"{name} must be an integer >= 0, got {value!r}")
        if self.batch_size < 1:
            raise ShardingError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.chunk_size is not None and (
            not isinstance(self.chunk_size, int) or self.chunk_size < 1
        ):
            raise ShardingError(f"chunk_size must be None or >= 1, got {self.chunk_size!r}")
        if self.mode != "random":
            from baldflow.acquisition.scores import get_score

            try:
                get_score(self.score)
            except (KeyError, ValueError) as error:
                raise ShardingError(f"unknown score {self.score!r}: {error}") from error

    @property
    def needs_model(self) -> bool:
        """Random selection uses only the ids' noise: no model pass at all (as steps does)."""
        return self.mode != "random"


@dataclasses.dataclass(frozen=True)
class ShardResult:
    """What a shard sends back: its candidates (at most batch_size) and what it cost, never
    its scores. `peak_rss_mb` is the worker process's peak resident set so far (VmHWM), `pid`
    tells the worker processes apart, `model_loaded` whether this shard paid the model load."""

    start: int
    stop: int
    candidates: Candidates
    rows: int
    seconds: float
    peak_rss_mb: float
    pid: int
    model_loaded: bool


def peak_rss_mb() -> float:
    """This process's peak resident set in MB: VmHWM, else getrusage's ru_maxrss (kB on Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _torch_threads(count: int):
    from baldflow.steps import torch_threads

    return torch_threads(count)


def shard_scores(job: ShardJob, start: int, stop: int) -> tuple[torch.Tensor, list[str], bool]:
    """(`scores_n` float64, the ids, whether the model was loaded) of rows [start, stop).

    Reads the shard READ_ROWS rows at a time (memory: one block plus n scores), and scores each
    block with a fresh `generator_for(mask_seed, STREAM_SCORE)`: the same K masks as the single
    process's one pass over the pool. Random mode scores nothing (zeros: its selection reads
    only the ids).
    """
    from baldflow.inference import score_pool
    from baldflow.steps import STREAM_SCORE, generator_for

    pool = DiskPool.open(job.pool_dir)
    with pool:
        sample_ids = pool.ids(start, stop)  # also checks the range
        n = len(sample_ids)
        scores_n = torch.zeros(n, dtype=torch.float64)
        if not job.needs_model or n == 0:
            return scores_n, sample_ids, False
        entry, loaded = cached_model(job.model_dir)
        with entry.lock, _torch_threads(job.torch_threads):
            for offset in range(0, n, READ_ROWS):
                x_B = pool.rows(start + offset, min(start + offset + READ_ROWS, stop))
                generator = generator_for(job.mask_seed, STREAM_SCORE)
                scores_n[offset : offset + x_B.shape[0]] = score_pool(
                    entry.model, x_B, job.score, job.mc_samples, generator, job.chunk_size
                )
    return scores_n, sample_ids, loaded


def score_shard(job: ShardJob, start: int, stop: int) -> ShardResult:
    """Score rows [start, stop) of the job's pool and return their best `batch_size`
    candidates (not the scores): the unit of work a Dask worker runs."""
    began = time.perf_counter()
    scores_n, sample_ids, loaded = shard_scores(job, start, stop)
    candidates = shard_candidates(
        scores_n, sample_ids, job.batch_size, job.mode, job.coldness, job.selection_seed
    )
    return ShardResult(
        start=int(start),
        stop=int(stop),
        candidates=candidates,
        rows=len(sample_ids),
        seconds=time.perf_counter() - began,
        peak_rss_mb=peak_rss_mb(),
        pid=os.getpid(),
        model_loaded=loaded,
    )


def warm_worker(job: ShardJob) -> dict[str, Any]:
    """Import what scoring needs and load the job's model into this process's cache, so a
    benchmark can time scoring apart from start-up (e.g. `client.run(warm_worker, job)`)."""
    import baldflow.inference  # noqa: F401
    import baldflow.steps  # noqa: F401

    loaded = False
    if job.needs_model:
        _, loaded = cached_model(job.model_dir)
    return {"pid": os.getpid(), "model_loaded": loaded, "peak_rss_mb": peak_rss_mb()}


# ------------------------------------------------------------------------------- the pass
ShardFunction = Callable[[int, int], ShardResult]
Submit = Callable[[ShardFunction, Sequence[tuple[int, int]]], Iterable[ShardResult]]


def local_submit(function: ShardFunction, ranges: Sequence[tuple[int, int]]) -> list[ShardResult]:
    """`submit` for score_pool_sharded that runs the shards one after another here."""
    return [function(start, stop) for start, stop in ranges]


def dask_submit(client: Any) -> Submit:
    """`submit` for score_pool_sharded on a distributed.Client: one task per shard.

    pure=False: a second pass with the same job (the model rewritten in place) must run again
    rather than reuse results Dask still holds under the same key.
    """

    def submit(function: ShardFunction, ranges: Sequence[tuple[int, int]]) -> list[ShardResult]:
        starts = [start for start, _ in ranges]
        stops = [stop for _, stop in ranges]
        return client.gather(client.map(function, starts, stops, pure=False))

    return submit


@dataclasses.dataclass
class ShardedStats:
    """What a sharded pass cost: every shard's result (without scores), the merge's seconds,
    the whole pass's seconds (submit to merged batch) and the pool's size."""

    results: list[ShardResult]
    merge_seconds: float
    seconds: float
    rows: int

    @property
    def samples_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else math.inf

    def worker_peak_rss_mb(self) -> dict[int, float]:
        """The largest peak RSS each worker process reported, by PID."""
        peaks: dict[int, float] = {}
        for result in self.results:
            peaks[result.pid] = max(peaks.get(result.pid, 0.0), result.peak_rss_mb)
        return peaks


def _checked_ranges(shards: int | Sequence[tuple[int, int]], count: int) -> list[tuple[int, int]]:
    """The shard ranges, which must tile [0, count) in order: a gap would leave samples out of
    the selection, an overlap would be refused by the merge only after all the work."""
    if isinstance(shards, int) and not isinstance(shards, bool):
        if shards < 1:
            raise ShardingError(f"shards must be >= 1, got {shards}")
        from baldflow.data.ondisk import shard_ranges

        return shard_ranges(count, shards)
    ranges = [(int(start), int(stop)) for start, stop in shards]
    if not ranges:
        raise ShardingError("no shards given")
    position = 0
    for start, stop in ranges:
        if start != position or stop < start:
            raise ShardingError(
                f"shards must tile the pool's rows [0, {count}) in order; got {ranges[:8]}"
                f"{' ...' if len(ranges) > 8 else ''} (wrong at [{start}, {stop}))"
            )
        position = stop
    if position != count:
        raise ShardingError(f"shards end at row {position}, the pool has {count} rows")
    return ranges


def score_pool_sharded(
    job: ShardJob, shards: int | Sequence[tuple[int, int]], submit: Submit = local_submit
) -> tuple[list[str], ShardedStats]:
    """The batch (ids in pick order) from scoring the pool in `shards` (a count, or (start,
    stop) ranges tiling the pool), and what it cost.

    `submit(function, ranges)` runs `function(start, stop)` for every range and returns the
    results in any order: `local_submit` (a loop), `dask_submit(client)`, or anything else that
    maps (a Prefect task's .map). `function` is a picklable `functools.partial(score_shard,
    job)`.
    """
    with DiskPool.open(job.pool_dir) as pool:
        count = len(pool)
    ranges = _checked_ranges(shards, count)
    began = time.perf_counter()
    results = list(submit(functools.partial(score_shard, job), ranges))
    merge_began = time.perf_counter()
    if len(results) != len(ranges):
        raise ShardingError(f"submit returned {len(results)} results for {len(ranges)} shards")
    if sum(result.rows for result in results) != count:
        raise ShardingError(
            f"the shards scored {sum(r.rows for r in results)} rows of the pool's {count}"
        )
    batch = merge_candidates([result.candidates for result in results], job.batch_size)
    finished = time.perf_counter()
    return batch, ShardedStats(results, finished - merge_began, finished - began, count)


def single_pool_scores(job: ShardJob) -> tuple[torch.Tensor, list[str]]:
    """(`scores_N`, ids) of the whole pool scored in this process in one pass of
    `inference.score_pool`, as `steps.score_pool` scores a round: the reference."""
    from baldflow.inference import score_pool
    from baldflow.steps import STREAM_SCORE, generator_for

    with DiskPool.open(job.pool_dir) as pool:
        sample_ids = pool.ids(0, len(pool))
        if not job.needs_model:
            return torch.zeros(len(sample_ids), dtype=torch.float64), sample_ids
        x_N = pool.rows(0, len(pool))
    entry, _ = cached_model(job.model_dir)
    generator = generator_for(job.mask_seed, STREAM_SCORE)
    with entry.lock, _torch_threads(job.torch_threads):
        scores_N = score_pool(
            entry.model, x_N, job.score, job.mc_samples, generator, job.chunk_size
        )
    return scores_N, sample_ids


def score_pool_single(job: ShardJob) -> list[str]:
    """The single-process reference: the whole pool scored here, the batch by `select_by_id`."""
    scores_N, sample_ids = single_pool_scores(job)
    return select_by_id(
        scores_N, sample_ids, job.batch_size, job.mode, job.coldness, job.selection_seed
    )
