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
  STREAM_SCORE)` as `compute.scoring.score_pool` does. A fresh generator with that seed gives
  the same masks on every worker and for every read block, so a row's K forward passes are the same
  whatever shard it falls in;
- the rows: `DiskPool.rows`, the same float32 values the single process reads.
Rows are batched differently (a shard starts its chunks at its own first row), so a score can in
principle differ in the last bits where a CPU kernel's result depends on the batch; the tests
check the scores and the batches are the same.

Labeled samples are left out by id (`exclude_file`, read once per worker). Softrank takes two
passes: its weight is a score's rank in the whole pool, so the first pass writes every shard's
scores to `scores_dir` (8 bytes a sample, merged on disk by `sorted_pool_scores_file`) and the
second cuts each shard's candidates against the pool's sorted scores without scoring again.
Each shard returns an `acquisition.picks.ShardSummary`: its candidates with their scores and
its share of the first-pick normaliser, so the ledger's columns come out of the merge too.

The job is a small frozen dataclass: it pickles as a few strings and numbers, so Dask sends it
cheaply, and a worker keeps the loaded model in a module-level cache keyed by the model
directory and its files' mtimes, so its second shard does not reload the model. Every location
in it is a local path or an `s3://` URL (`compute.staging`): workers that share no filesystem
with the flow read the staged model, the labeled ids and EPIG's targets from the store and
write their score files there.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import resource
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from baldflow.acquisition.annealed import (
    AnnealedShard,
    annealed_select_by_id,
    annealed_shard_candidates,
    coldness_schedule,
    merge_annealed,
)
from baldflow.acquisition.epig import epig_score_function, target_ids
from baldflow.acquisition.picks import ShardSummary, merge_summaries, summarise_shard
from baldflow.acquisition.scored import EPIG
from baldflow.acquisition.selection import MODES
from baldflow.acquisition.sharded import Candidates, select_by_id
from baldflow.acquisition.strategy import COVER_CANDIDATES, PICK_CANDIDATES, WHOLE_POOL_NEEDS
from baldflow.compute import diverse_passes, staging
from baldflow.compute.device import torch_threads
from baldflow.compute.scoring import ScoringPlan, sharded_plan
from baldflow.config import Config
from baldflow.data.object_store import is_url
from baldflow.data.pool_formats import open_pool
from baldflow.data.row_pool import shard_ranges
from baldflow.models.weights import SPEC_FILE, WEIGHTS_FILE, save_model_files
from baldflow.seeds import STREAM_SCORE, STREAM_SELECT, generator_for

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
    from baldflow.models.building import ModelRebuildError, rebuild_model

    directory = Path(directory)
    try:
        return rebuild_model(directory / SPEC_FILE, directory / WEIGHTS_FILE)
    except FileNotFoundError as error:
        raise ShardingError(
            f"model directory {directory} needs {WEIGHTS_FILE} and {SPEC_FILE}: {error}"
        ) from error
    except ModelRebuildError as error:
        raise ShardingError(
            f"cannot rebuild the model in {directory} from {SPEC_FILE} and {WEIGHTS_FILE}: {error}"
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


def cached_model(directory: str | Path, device: str = "cpu") -> tuple[_CachedModel, bool]:
    """This process's copy of the model in `directory` on `device`, and whether this call
    loaded it.

    Keyed by the resolved path, the device and both files' mtimes: a worker scoring its second
    shard reuses the model, and a model rewritten in place (a new round) is loaded afresh.
    `device` "auto" is the worker's CUDA device when it has one (a worker started with
    CUDA_VISIBLE_DEVICES set sees only its own), else the CPU.
    """
    from baldflow.training import resolve_device

    directory = staging.local_model_dir(directory).resolve()
    stamp = _model_stamp(directory)
    target = resolve_device(device)
    key = f"{directory}@{target}"
    with _MODELS_LOCK:
        entry = _MODELS.get(key)
        if entry is not None and entry.stamp == stamp:
            return entry, False
        entry = _CachedModel(stamp, load_model_dir(directory).to(target), threading.Lock())
        _MODELS[key] = entry
        return entry, True


# -------------------------------------------------------------------------------------- job
@dataclasses.dataclass(frozen=True)
class ShardJob(ScoringPlan):
    """Everything a worker needs to score a shard and cut its candidates; cheap to pickle.

    The round's `compute.scoring.ScoringPlan` (its fields, given by keyword: `score` a name of
    `acquisition.scores.SCORES`, `mask_seed` the masks' seed, `batch_size`, `mode`,
    `coldness`, `selection_seed` the cut, as `select_by_id` takes them, ...) plus where a
    worker reads and writes: `model_dir`, a directory with state_dict.pt and spec.json
    (`save_model_dir`); `pool_dir`, a pool in any format `data.pool_formats.open_pool` reads.
    `torch_threads`: torch CPU threads while scoring a shard (1: one core per worker process;
    0 leaves torch's choice).
    """

    model_dir: str
    pool_dir: str
    _: dataclasses.KW_ONLY
    torch_threads: int = 1
    # A text file of sample ids (one per line) left out of scoring and selection: the labeled.
    exclude_file: str | None = None
    # Where each shard writes its scores (`<start>-<stop>.npy`, NaN for excluded rows), for
    # the audit trail and the softrank pass; None writes nothing.
    scores_dir: str | None = None
    # Softrank only: a .npy of the pool's sorted scores (written by `sorted_pool_scores_file`
    # from the first pass's score files); the second pass then reads each shard's score file
    # instead of scoring it again.
    sorted_scores_file: str | None = None
    # torch device of the workers' model: cpu, cuda, cuda:N, or auto (CUDA when present).
    # (mixed_precision, from the plan: bfloat16 autocast of the forward passes where a worker's
    # model is on CUDA; nothing on a CPU worker, whose scores are the full-precision scores.)
    device: str = "cpu"
    # EPIG only: a .npy of the targets' MC log-probs [T, K, C] (float32), computed once for the
    # pass by `write_epig_targets` and read by every shard (broadcast, never recomputed).
    epig_targets_file: str | None = None
    # CoreSet only: a .npy of the labeled set's features [L, D] (float32), computed once by
    # `write_labeled_features`; and the pass's request (the picks certified so far, a few rows).
    labeled_features_file: str | None = None
    coreset_request: Any = None

    @classmethod
    def of_plan(cls, plan: ScoringPlan, **where: Any) -> ShardJob:
        """The job that scores `plan` in shards; `where`: model_dir, pool_dir and the rest."""
        fields = {field.name: getattr(plan, field.name) for field in dataclasses.fields(plan)}
        return cls(**fields, **where)

    def __post_init__(self) -> None:
        # Paths as strings: the job pickles small and the same on every machine.
        object.__setattr__(self, "model_dir", str(self.model_dir))
        object.__setattr__(self, "pool_dir", str(self.pool_dir))
        for name in ("exclude_file", "scores_dir", "sorted_scores_file", "epig_targets_file",
                     "labeled_features_file"):  # fmt: skip
            if getattr(self, name) is not None:
                object.__setattr__(self, name, str(getattr(self, name)))
        if self.mode not in MODES:
            raise ShardingError(f"unknown mode {self.mode!r}; valid modes: {', '.join(MODES)}")
        coldness = float(self.coldness)
        if math.isnan(coldness) or coldness < 0:
            raise ShardingError(f"coldness must be >= 0 (inf allowed), got {self.coldness!r}")
        if self.needs_ranks and self.sorted_scores_file is None and self.scores_dir is None:
            raise ShardingError(
                "softrank needs the pool's ranks: run score_pool_sharded (two passes, with a "
                "scores_dir) or give sorted_scores_file"
            )
        for name in ("mc_samples", "batch_size", "torch_threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ShardingError(f"{name} must be an integer >= 0, got {value!r}")
        if self.batch_size < 1:
            raise ShardingError(f"batch_size must be >= 1, got {self.batch_size}")
        if not isinstance(self.mixed_precision, bool):
            raise ShardingError(
                f"mixed_precision must be true or false, got {self.mixed_precision!r}"
            )
        if self.chunk_size is not None and (
            not isinstance(self.chunk_size, int) or self.chunk_size < 1
        ):
            raise ShardingError(f"chunk_size must be None or >= 1, got {self.chunk_size!r}")
        if self.needs & WHOLE_POOL_NEEDS:
            raise ShardingError(
                f"a shard cannot give what the plan needs of the whole pool in one process: "
                f"{', '.join(sorted(self.needs & WHOLE_POOL_NEEDS))}"
            )
        if PICK_CANDIDATES in self.needs and self.coldness_end is None:
            raise ShardingError("an annealed batch in shards needs coldness_end (the schedule)")
        if self.needs_model and self.score != EPIG:  # EPIG's targets: job_score
            from baldflow.acquisition.scores import get_score

            try:
                get_score(self.score)
            except (KeyError, ValueError) as error:
                raise ShardingError(f"unknown score {self.score!r}: {error}") from error

    @property
    def needs_model(self) -> bool:
        """Random selection uses only the ids' noise, and a plan without a score scores every
        sample 0: no model pass at all (as in one process)."""
        return self.mode != "random" and self.score is not None

    @property
    def needs_ranks(self) -> bool:
        """Softrank weighs a score by its rank in the whole pool: a pass to gather the ranks
        (annealed softrank at any schedule: its log-weights are ranks, as in one process)."""
        if self.mode != "softrank":
            return False
        return PICK_CANDIDATES in self.needs or 0 < float(self.coldness) < math.inf


@dataclasses.dataclass(frozen=True)
class ShardResult:
    """What a shard sends back: its summary (at most batch_size candidates, their scores and
    the shard's share of the normaliser) and what it cost, never its scores. `rows` counts the
    shard's rows, `scored` those not excluded. `peak_rss_mb` is the worker process's peak
    resident set so far (VmHWM), `pid` tells the worker processes apart, `model_loaded`
    whether this shard paid the model load. A softrank first pass has no summary (None); an
    annealed pass (PICK_CANDIDATES) sends an `acquisition.annealed.AnnealedShard` instead."""

    start: int
    stop: int
    summary: ShardSummary | AnnealedShard | None
    rows: int
    scored: int
    seconds: float
    peak_rss_mb: float
    pid: int
    model_loaded: bool

    @property
    def candidates(self) -> Candidates:
        return self.summary.candidates


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


_EXCLUDED: dict[str, tuple[tuple[int, int] | None, frozenset[str]]] = {}


def excluded_ids(path: str | None) -> frozenset[str]:
    """The ids in `path` (one per line; a file, or an object staged by content hash), cached
    per worker: a file by its size and mtime, a staged object by its key, whose name is its
    content's hash."""
    if path is None:
        return frozenset()
    if is_url(path):
        stamp = None
    else:
        try:
            stat = os.stat(path)
        except FileNotFoundError as error:
            raise ShardingError(f"exclude_file {path} does not exist") from error
        stamp = (stat.st_size, stat.st_mtime_ns)
    with _MODELS_LOCK:
        cached = _EXCLUDED.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
    ids = frozenset(staging.read_text(path).splitlines())
    with _MODELS_LOCK:
        if len(_EXCLUDED) >= 8:  # a worker serves one campaign's rounds at a time
            _EXCLUDED.clear()
        _EXCLUDED[path] = (stamp, ids)
    return ids


def exclude_text(sample_ids: Iterable[str]) -> str:
    """The ids a pass must leave out as `exclude_file` holds them: sorted, one per line."""
    return "".join(f"{sid}\n" for sid in sorted(sample_ids))


def write_exclude_file(sample_ids: Iterable[str], path: str | Path) -> Path:
    """Write the ids a pass must leave out (the labeled set), atomically, for `exclude_file`."""
    from baldflow.common import atomic_write_text

    path = Path(path)
    atomic_write_text(path, exclude_text(sample_ids))
    return path


def scores_file(scores_dir: str | Path, start: int, stop: int) -> str:
    """Where a shard's scores go: a file of the scores directory, or a key under its prefix."""
    return staging.join(scores_dir, f"{int(start):012d}-{int(stop):012d}.npy")


def shard_scores(job: ShardJob, start: int, stop: int) -> tuple[torch.Tensor, list[str], bool]:
    """(`scores_n` float64, the ids, whether the model was loaded) of rows [start, stop).

    Reads the shard READ_ROWS rows at a time (memory: one block plus n scores), and scores each
    block with a fresh `generator_for(mask_seed, STREAM_SCORE)`: the same K masks as the single
    process's one pass over the pool. Random mode scores nothing (zeros: its selection reads
    only the ids). A softrank second pass reads the first pass's score file instead.
    """
    from baldflow.inference import score_pool

    pool = open_pool(job.pool_dir)
    with pool:
        sample_ids = pool.ids(start, stop)  # also checks the range
        n = len(sample_ids)
        scores_n = torch.zeros(n, dtype=torch.float64)
        if not job.needs_model or n == 0:
            return scores_n, sample_ids, False
        if job.sorted_scores_file is not None and job.scores_dir is not None:
            saved = torch.from_numpy(staging.read_array(scores_file(job.scores_dir, start, stop)))
            if saved.numel() != n:
                raise ShardingError(f"score file of rows [{start}, {stop}) has {saved.numel()}")
            return saved, sample_ids, False
        score = job_score(job)
        entry, loaded = cached_model(job.model_dir, job.device)
        with entry.lock, torch_threads(job.torch_threads):
            for offset in range(0, n, READ_ROWS):
                x_B = pool.rows(start + offset, min(start + offset + READ_ROWS, stop))
                generator = generator_for(job.mask_seed, STREAM_SCORE)
                scores_n[offset : offset + x_B.shape[0]] = score_pool(
                    entry.model, x_B, score, job.mc_samples, generator, job.chunk_size,
                    mixed_precision=job.mixed_precision,
                )  # fmt: skip
    return scores_n, sample_ids, loaded


def job_score(job: ShardJob) -> Any:
    """What a shard scores each sample with: the score's name, or for EPIG the score function
    against the targets' log-probs the driver computed once (`write_epig_targets`)."""
    if job.score != EPIG:
        return job.score
    if job.epig_targets_file is None:
        raise ShardingError(
            "EPIG needs its targets' predictions: build the job with shard_job (or give "
            "epig_targets_file, see write_epig_targets)"
        )
    return epig_score_function(torch.from_numpy(staging.read_array(job.epig_targets_file)))


def write_epig_targets(job: ShardJob, path: str | Path) -> ShardJob:
    """EPIG's broadcast: choose the targets and predict them once, for every shard.

    The targets are `epig.target_ids(mask_seed, ...)` of the unlabeled ids (the pool's ids
    streamed shard-free, the excluded left out): a keyed hash of the ids, so the same set as
    the one process draws. Their log-probs come from a fresh `generator_for(mask_seed,
    STREAM_SCORE)`, i.e. the K masks that score every shard, predicted in this process on the
    rows read by id, in the targets' order, exactly as `compute.scoring.epig_score` predicts
    them in one process. Written as one .npy of T*K*C float32 (80 KB for 100 targets, K 20,
    C 10); the returned job names it, and each shard scores EPIG against it.
    """

    from baldflow.inference import predict_log_probs

    excluded = excluded_ids(job.exclude_file)
    with open_pool(job.pool_dir) as pool:
        count = len(pool)
        chunks = (
            [sid for sid in pool.ids(offset, min(offset + READ_ROWS, count)) if sid not in excluded]
            for offset in range(0, count, READ_ROWS)
        )
        targets = target_ids(job.mask_seed, chunks, job.epig_targets)
        x_T = pool.rows_by_ids(targets)
    entry, _ = cached_model(job.model_dir, job.device)
    with entry.lock, torch_threads(job.torch_threads):
        log_probs_T_K_C = predict_log_probs(
            entry.model, x_T, job.mc_samples, generator_for(job.mask_seed, STREAM_SCORE),
            chunk_size=job.chunk_size, mixed_precision=job.mixed_precision,
        )  # fmt: skip
    staging.write_array(path, log_probs_T_K_C.numpy())
    return dataclasses.replace(job, epig_targets_file=str(path))


def _sorted_scores(job: ShardJob) -> torch.Tensor | None:
    if job.sorted_scores_file is None or not job.needs_ranks:
        return None
    return torch.from_numpy(staging.read_array(job.sorted_scores_file))


def score_shard(job: ShardJob, start: int, stop: int) -> ShardResult:
    """Score rows [start, stop) of the job's pool (leaving out the excluded ids) and return
    their summary: the best `batch_size` candidates, not the scores. The unit of work a Dask
    worker runs; safe to run twice (its score file is replaced atomically)."""
    began = time.perf_counter()
    if job.needs & diverse_passes.DIVERSE_NEEDS:
        return _diverse_shard(job, start, stop, began)
    scores_n, sample_ids, loaded = shard_scores(job, start, stop)
    excluded = excluded_ids(job.exclude_file)
    keep = [i for i, sid in enumerate(sample_ids) if sid not in excluded]
    if job.scores_dir is not None and job.sorted_scores_file is None:
        written = scores_n.clone()
        if len(keep) < len(sample_ids):
            mask = torch.ones(len(sample_ids), dtype=torch.bool)
            mask[keep] = False
            written[mask] = math.nan
        staging.write_array(scores_file(job.scores_dir, start, stop), written.numpy())
    if len(keep) < len(sample_ids):
        scores_n = scores_n[torch.tensor(keep, dtype=torch.long)]
        sample_ids = [sample_ids[i] for i in keep]
    summary = None
    if PICK_CANDIDATES in job.needs and (not job.needs_ranks or job.sorted_scores_file):
        schedule = coldness_schedule(job.batch_size, job.coldness, job.coldness_end)
        summary = annealed_shard_candidates(
            scores_n, sample_ids, job.batch_size, job.mode, schedule, job.selection_seed,
            _sorted_scores(job),
        )  # fmt: skip
    elif not job.needs_ranks or job.sorted_scores_file is not None:
        summary = summarise_shard(
            scores_n, sample_ids, job.batch_size, job.mode, job.coldness, job.selection_seed,
            _sorted_scores(job),
        )  # fmt: skip
    return ShardResult(
        start=int(start),
        stop=int(stop),
        summary=summary,
        rows=int(stop) - int(start),
        scored=len(sample_ids),
        seconds=time.perf_counter() - began,
        peak_rss_mb=peak_rss_mb(),
        pid=os.getpid(),
        model_loaded=loaded,
    )


def _diverse_shard(job: ShardJob, start: int, stop: int, began: float) -> ShardResult:
    """BADGE's or CoreSet's rows of this shard for the merge (`compute.diverse_passes`)."""
    excluded = excluded_ids(job.exclude_file)
    labeled = diverse_passes.labeled_features(job)
    entry, loaded = cached_model(job.model_dir, job.device)
    with open_pool(job.pool_dir) as pool, entry.lock, torch_threads(job.torch_threads):
        sample_ids = pool.ids(start, stop)
        rows = diverse_passes.propose(
            job, entry.model, pool, start, stop, sample_ids, excluded, labeled, READ_ROWS
        )
    return ShardResult(
        start=int(start), stop=int(stop), summary=rows, rows=int(stop) - int(start),
        scored=sum(sid not in excluded for sid in sample_ids),
        seconds=time.perf_counter() - began, peak_rss_mb=peak_rss_mb(), pid=os.getpid(),
        model_loaded=loaded,
    )  # fmt: skip


def write_labeled_features(job: ShardJob, path: str | Path) -> ShardJob:
    """CoreSet's broadcast: the labeled set's penultimate features, embedded once here as one
    process embeds them (`compute.scoring`: ids sorted, no MC passes), for every shard."""
    from baldflow.inference import embed_pool

    labeled = sorted(excluded_ids(job.exclude_file))
    with open_pool(job.pool_dir) as pool:
        x_L = pool.rows_by_ids(labeled) if labeled else None
    if x_L is None:
        return job
    entry, _ = cached_model(job.model_dir, job.device)
    with entry.lock, torch_threads(job.torch_threads):
        features_L_D, _ = embed_pool(
            entry.model, x_L, 0, generator_for(job.mask_seed, 0), chunk_size=job.chunk_size,
            mixed_precision=job.mixed_precision,
        )  # fmt: skip
    staging.write_array(path, features_L_D.numpy())
    return dataclasses.replace(job, labeled_features_file=str(path))


def merge_score_files(scores_dir: str | Path, ranges: Sequence[tuple[int, int]], out: Path) -> Path:
    """One float64 .npy of the whole pool's scores (NaN: excluded) from the shards' score
    files, streamed file by file: the flow never holds more than one shard's scores."""
    import numpy as np
    from numpy.lib import format as npy

    count = sum(stop - start for start, stop in ranges)
    out = Path(out)
    temporary = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as f:
        npy.write_array_header_2_0(
            f, {"descr": npy.dtype_to_descr(np.dtype("<f8")), "fortran_order": False,
                "shape": (count,)}
        )  # fmt: skip
        for start, stop in ranges:
            part = staging.read_array(scores_file(scores_dir, start, stop))
            if part.shape != (stop - start,):
                raise ShardingError(f"score file of rows [{start}, {stop}) has shape {part.shape}")
            f.write(part.astype("<f8", copy=False).tobytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, out)
    return out


def sorted_pool_scores_file(scores_dir: str | Path, ranges, out: str | Path) -> tuple[str, int]:
    """Softrank's extra pass: the scored samples' scores, sorted, as one .npy at `out` (8 bytes
    a sample: the only O(N) thing the flow holds, and only for softrank); and how many. The
    shards' files are merged into a local temporary file first, wherever they are staged."""
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="baldflow-ranks-") as scratch:
        merged = merge_score_files(scores_dir, ranges, Path(scratch) / "pool-scores.npy")
        scores = np.load(merged, mmap_mode="r")
        kept = np.sort(scores[~np.isnan(scores)])
        del scores
    staging.write_array(out, kept)
    return str(out), int(kept.size)


def warm_worker(job: ShardJob) -> dict[str, Any]:
    """Import what scoring needs and load the job's model into this process's cache, so a
    benchmark can time scoring apart from start-up (e.g. `client.run(warm_worker, job)`)."""
    import baldflow.inference  # noqa: F401

    loaded = False
    if job.needs_model:
        _, loaded = cached_model(job.model_dir, job.device)
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
    job)`. Softrank takes two passes: the first writes every shard's scores to the job's
    scores_dir, the second (no model pass) cuts candidates with the pool's sorted scores.
    """
    ranges = pool_ranges(job, shards)
    count = ranges[-1][1] if ranges else 0
    began = time.perf_counter()
    if job.needs & diverse_passes.DIVERSE_NEEDS:
        results = run_passes(job, ranges, submit)
        merge_began = time.perf_counter()
        batch = diverse_batch(job, diverse_passes.merged_rows([r.summary for r in results]))
        finished = time.perf_counter()
        return batch, ShardedStats(results, finished - merge_began, finished - began, count)
    results = run_pass(job, ranges, submit)
    sorted_scores = None
    if job.needs_ranks:
        sorted_file, _ = sorted_pool_scores_file(
            job.scores_dir, ranges, staging.join(job.scores_dir, "sorted-scores.npy")
        )
        job = dataclasses.replace(job, sorted_scores_file=str(sorted_file))
        results = run_pass(job, ranges, submit)
        sorted_scores = _sorted_scores(job)
    merge_began = time.perf_counter()
    summaries = [r.summary for r in results]
    if PICK_CANDIDATES in job.needs:
        scored = sum(r.scored for r in results)
        batch = merge_annealed(summaries, min(job.batch_size, scored)).sample_ids if scored else []
    else:
        batch = merge_summaries(summaries, job.batch_size, sorted_scores).sample_ids
    finished = time.perf_counter()
    return batch, ShardedStats(results, finished - merge_began, finished - began, count)


def run_passes(
    job: ShardJob, ranges: Sequence[tuple[int, int]], submit: Submit
) -> list[ShardResult]:
    """The job's model passes: CoreSet's until every pick is certified, BADGE's one
    (`compute.diverse_passes.run_passes`: each shard's result with the rows its merge keeps),
    else `run_pass` (softrank's second pass, after the ranking, is the caller's)."""
    if not job.needs & diverse_passes.DIVERSE_NEEDS:
        return run_pass(job, ranges, submit)
    return diverse_passes.run_passes(job, lambda one: run_pass(one, ranges, submit))


def diverse_batch(job: ShardJob, rows: diverse_passes.DiverseRows) -> list[str]:
    """The batch of BADGE or CoreSet from the merge's rows, drawn as the strategy draws it
    in the flow (`compute.selecting`: the round's selection stream)."""
    from baldflow.acquisition.badge import badge, gradient_embeddings
    from baldflow.acquisition.coreset import coreset

    if not rows.sample_ids:
        return []
    if COVER_CANDIDATES in job.needs:
        chosen = coreset(rows.features_m_D, job.batch_size, rows.labeled_features_L_D)
    else:
        embeddings = gradient_embeddings(rows.features_m_D, rows.probs_m_C)
        chosen = badge(embeddings, job.batch_size, generator_for(job.mask_seed, STREAM_SELECT))
    return [rows.sample_ids[i] for i in chosen.tolist()]


def pool_ranges(job: ShardJob, shards: int | Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The checked (start, stop) row ranges of the job's pool for `shards`."""
    with open_pool(job.pool_dir) as pool:
        count = len(pool)
    return _checked_ranges(shards, count)


def run_pass(job: ShardJob, ranges: Sequence[tuple[int, int]], submit: Submit) -> list[ShardResult]:
    """Every shard of one pass, checked: one result per range, every row accounted for."""
    results = list(submit(functools.partial(score_shard, job), ranges))
    if len(results) != len(ranges):
        raise ShardingError(f"submit returned {len(results)} results for {len(ranges)} shards")
    count = sum(stop - start for start, stop in ranges)
    if sum(result.rows for result in results) != count:
        raise ShardingError(
            f"the shards scored {sum(r.rows for r in results)} rows of the pool's {count}"
        )
    return sorted(results, key=lambda result: result.start)


def single_pool_scores(job: ShardJob) -> tuple[torch.Tensor, list[str]]:
    """(`scores_N`, ids) of the whole pool scored in this process in one pass of
    `inference.score_pool`, as `compute.scoring.score_pool` scores a round: the reference."""
    from baldflow.inference import score_pool

    with open_pool(job.pool_dir) as pool:
        sample_ids = pool.ids(0, len(pool))
        if not job.needs_model:
            return torch.zeros(len(sample_ids), dtype=torch.float64), sample_ids
        x_N = pool.rows(0, len(pool))
    entry, _ = cached_model(job.model_dir, job.device)
    generator = generator_for(job.mask_seed, STREAM_SCORE)
    with entry.lock, torch_threads(job.torch_threads):
        scores_N = score_pool(
            entry.model, x_N, job_score(job), job.mc_samples, generator, job.chunk_size,
            mixed_precision=job.mixed_precision,
        )  # fmt: skip
    return scores_N, sample_ids


def score_pool_single(job: ShardJob) -> list[str]:
    """The single-process reference: the whole pool scored here, the batch by `select_by_id`
    (the excluded ids left out); BADGE and CoreSet on the whole pool's embeddings."""
    if job.needs & diverse_passes.DIVERSE_NEEDS:
        return diverse_batch(job, _single_pool_rows(job))
    scores_N, sample_ids = single_pool_scores(job)
    excluded = excluded_ids(job.exclude_file)
    if excluded:
        keep = [i for i, sid in enumerate(sample_ids) if sid not in excluded]
        scores_N, sample_ids = scores_N[keep], [sample_ids[i] for i in keep]
    if PICK_CANDIDATES in job.needs:
        size = min(job.batch_size, len(sample_ids))
        if size == 0:
            return []
        schedule = coldness_schedule(size, job.coldness, job.coldness_end)
        chosen = annealed_select_by_id(
            scores_N, sample_ids, size, job.mode, schedule, job.selection_seed
        )
        return [sample_ids[i] for i in chosen.indices.tolist()]
    return select_by_id(
        scores_N, sample_ids, job.batch_size, job.mode, job.coldness, job.selection_seed
    )


def _single_pool_rows(job: ShardJob) -> diverse_passes.DiverseRows:
    """Every unlabeled row of the pool embedded in one block here: BADGE's and CoreSet's
    single-process reference."""
    excluded = excluded_ids(job.exclude_file)
    entry, _ = cached_model(job.model_dir, job.device)
    with open_pool(job.pool_dir) as pool, entry.lock, torch_threads(job.torch_threads):
        count = len(pool)
        sample_ids = pool.ids(0, count)
        keep = [i for i, sid in enumerate(sample_ids) if sid not in excluded]
        features, probs = diverse_passes.embed_rows(
            job, entry.model, pool, 0, count, keep, max(count, 1)
        )
    if features is None:
        return diverse_passes.DiverseRows([], torch.empty(0, dtype=torch.long), features, None)
    return diverse_passes.DiverseRows(
        [sample_ids[i] for i in keep], torch.tensor(keep, dtype=torch.long), features, probs,
        labeled_features_L_D=diverse_passes.labeled_features(job),
    )  # fmt: skip


def shard_job(
    config: Config,
    seed: int,
    *,
    model_dir: str | Path,
    pool_dir: str | Path,
    exclude_file: str | Path | None,
    scores_dir: str | Path | None,
) -> Any:
    """The `sharding.ShardJob` that scores a round's pool as `score_pool` would in one process:
    the round's plan itself (score, K, masks, selection), one torch thread per worker process.
    EPIG: the targets are chosen and predicted here, once (`write_epig_targets`, into
    `scores_dir`), and every shard reads their log-probs; CoreSet: the labeled set's features
    likewise (`write_labeled_features`)."""
    job = ShardJob.of_plan(
        sharded_plan(config, seed),
        model_dir=str(model_dir),
        pool_dir=str(pool_dir),
        torch_threads=1,
        exclude_file=None if exclude_file is None else str(exclude_file),
        scores_dir=None if scores_dir is None else str(scores_dir),
        device=config.training.device,
    )
    if COVER_CANDIDATES in job.needs:
        if scores_dir is None:
            raise ShardingError("CoreSet in shards needs a scores_dir for the labeled features")
        return write_labeled_features(
            job, staging.join(scores_dir, diverse_passes.LABELED_FEATURES_FILE)
        )
    if job.score != EPIG or not job.needs_model:
        return job
    if scores_dir is None:
        raise ShardingError("EPIG in shards needs a scores_dir for its targets' predictions")
    return write_epig_targets(job, staging.join(scores_dir, "epig-targets.npy"))
