"""Frozen backbone, cached features: what scoring and a round cost with a small head on a big pool.

The goals measured (one torch thread per process, so every rate is per core):

1. scoring: 1,000,000 pool samples of 512-dim cached features, head Linear(512, 256) -> ReLU ->
   Dropout(0.5) -> Linear(256, C=10), K = 20 MC samples, BALD: >= 200,000 samples/s per core;
2. round: one whole round through the real campaign pipeline (`baldflow run` on a disk source:
   train the head, score, select, git/DVC commit, ledger, MLflow) in under 30 s;
3. memory: the peak RSS of scoring N = 250k and N = 1M rows is about the same (rows are read by
   row ranges, shard by shard, as a campaign does).

Part A writes the features pool (`<out>/source/pool`, float32 [N, D], class-dependent means so
the head can learn, plus small val/ and test/ parts), builds the head through baldflow's plug-in
path (import string `heads:feature_head`, `benchmarks/heads.py`), and scores the whole pool with
the function a campaign's shard task uses (`baldflow.compute.sharding.shard_scores`: reads
READ_ROWS rows at a time with `DiskPool.rows`, `inference.score_pool` with the round's chunk
size), shard by shard (`flows.scoring.LOCAL_SHARD_ROWS` rows, as `runner: local` does). It then
times the parts of one chunk's work on in-memory rows (disk read, prefix, head, BALD; and the
head run the K-fold way, for comparison) so a missed goal says where the time goes. Part B
scores N = 250k and N = 1M rows in fresh subprocesses and reports their peak RSS. Part C runs
`baldflow run` for one round on the pool (a temporary Prefect server is started by baldflow;
its start-up is reported apart).

    .venv/bin/python benchmarks/frozen_head.py                 # everything, ~2 minutes
    .venv/bin/python benchmarks/frozen_head.py --skip-round    # parts A and B only

Progress goes to stderr, the summary table to stdout. The work directory (--out, 2 GB for the
default pool) is deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODEL_NAME = "heads:feature_head"
WRITE_ROWS = 8192
MEAN_STD = 0.15  # per-dimension std of the class means; noise is N(0, 1)
HELD_OUT_ROWS = 2000
GOAL_RATE = 200_000.0
GOAL_ROUND_S = 30.0
GOAL_RSS_RATIO = 1.10  # "about the same": the 1M peak within 10% of the 250k peak


def progress(message: str) -> None:
    print(f"[frozen-head {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset VmHWM (Linux >= 4.0) so the next peak is the scoring's, not torch's import."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# ------------------------------------------------------------------------------------ data
def feature_batches(rows: int, dim: int, classes: int, seed: int, stream: int, prefix: str):
    """float32 features: class mean (fixed by `seed`) plus N(0, 1) noise; batch b's labels and
    noise from a generator seeded by (seed, stream, b), so held-out parts share the classes."""
    means = np.random.default_rng([seed, 2**31]).standard_normal((classes, dim), np.float32)
    means *= MEAN_STD
    for batch, start in enumerate(range(0, rows, WRITE_ROWS)):
        stop = min(start + WRITE_ROWS, rows)
        generator = np.random.default_rng([seed, stream, batch])
        y = generator.integers(0, classes, size=stop - start, dtype=np.int64)
        x = generator.standard_normal((stop - start, dim), dtype=np.float32)
        x += means[y]
        yield x, y, [f"{prefix}{i}" for i in range(start, stop)]


def write_part(directory: Path, rows: int, dim: int, classes: int, seed: int, stream: int,
               prefix: str, report: bool = False) -> float:  # fmt: skip
    from baldflow.data.ondisk import PoolWriter

    started = time.perf_counter()
    names = [f"c{c}" for c in range(classes)]
    with PoolWriter(directory, (dim,), "float32", rows, class_names=names, overwrite=True) as w:
        for x, y, ids in feature_batches(rows, dim, classes, seed, stream, prefix):
            w.write(x, y, ids)
            if report and (w.written // WRITE_ROWS) % 32 == 0:
                progress(f"  wrote {w.written:,}/{rows:,} rows")
    return time.perf_counter() - started


def write_source(root: Path, args) -> dict:
    """<root>/pool (args.rows), <root>/val and <root>/test (HELD_OUT_ROWS each)."""
    progress(f"writing the features pool: {args.rows:,} x {args.dim} float32 to {root}/pool")
    seconds = write_part(root / "pool", args.rows, args.dim, args.classes, args.seed, 0, "f",
                         report=True)  # fmt: skip
    for stream, part in ((1, "val"), (2, "test")):
        write_part(root / part, HELD_OUT_ROWS, args.dim, args.classes, args.seed, stream, part)
    size = sum(p.stat().st_size for p in (root / "pool").iterdir())
    progress(f"  pool written in {seconds:.1f} s ({size / 1e9:.2f} GB)")
    return {"seconds": seconds, "bytes": size}


# --------------------------------------------------------------------------------- scoring
def make_job(model_dir: Path, pool_dir: Path, k: int, chunk_size: int | None):
    from baldflow.compute.sharding import ShardJob

    return ShardJob(
        score="bald", mc_samples=k, mask_seed=0, chunk_size=chunk_size,
        model_dir=str(model_dir), pool_dir=str(pool_dir), torch_threads=1,
    )  # fmt: skip


def score_rows(job, rows: int, shard_rows: int, label: str = "") -> tuple[float, float]:
    """Score rows [0, rows) shard by shard with `shard_scores` (the campaign's shard task's
    scoring); (seconds, sum of scores). Keeps no scores: memory is one shard's."""
    from baldflow.compute.sharding import shard_scores

    total = 0.0
    started = time.perf_counter()
    for start in range(0, rows, shard_rows):
        stop = min(start + shard_rows, rows)
        scores_n, _, _ = shard_scores(job, start, stop)
        total += float(scores_n.sum())
        if label:
            elapsed = time.perf_counter() - started
            progress(f"  {label}: {stop:,}/{rows:,} rows, {stop / elapsed:,.0f} samples/s")
    return time.perf_counter() - started, total


def default_chunk_size() -> int:
    from baldflow.config import Config

    return Config().acquisition.chunk_size


def build_head(args):
    from baldflow.models.building import build_model

    options = {"hidden": args.hidden}
    return build_model(MODEL_NAME, (args.dim,), args.classes, seed=0, options=options)


def part_a(args, source: Path, work: Path) -> dict:
    from baldflow.compute.sharding import save_model_dir
    from flows.scoring import LOCAL_SHARD_ROWS

    torch.set_num_threads(1)
    model = build_head(args)
    model.eval()
    model.resample_masks(args.k, torch.Generator().manual_seed(0))
    split = getattr(model, "split", "?")
    progress(f"model split: {split} ({getattr(model, 'split_detail', '')}); "
             f"prefix {type(model.prefix).__name__}, head {type(model.head).__name__}")  # fmt: skip
    model_dir = save_model_dir(model, work / "model")
    chunk = args.chunk_size or default_chunk_size()
    job = make_job(model_dir, source / "pool", args.k, chunk)
    progress("warm-up: one read block")
    score_rows(job, min(8192, args.rows), LOCAL_SHARD_ROWS)
    runs = []
    load = [os.getloadavg()[0]]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    for run in (1, 2):
        seconds, checksum = score_rows(job, args.rows, LOCAL_SHARD_ROWS, f"scoring run {run}")
        runs.append(seconds)
        load.append(os.getloadavg()[0])
        progress(f"scoring run {run}: {args.rows / seconds:,.0f} samples/s ({seconds:.1f} s, "
                 f"sum of scores {checksum:.6g})")  # fmt: skip
    best = min(runs)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = {
        "user_s": after.ru_utime - usage.ru_utime,
        "sys_s": after.ru_stime - usage.ru_stime,
        "minor_faults": after.ru_minflt - usage.ru_minflt,
        "wall_s": sum(runs),
        "load_1min": load,
    }
    progress(f"scoring runs' CPU: {cpu}")
    result = {
        "cpu": cpu,
        "split": split, "chunk_size": chunk, "seconds": runs, "rate": args.rows / best,
        "model_dir": str(model_dir), "shard_rows": LOCAL_SHARD_ROWS,
    }  # fmt: skip
    result["profile"] = profile(args, model, source / "pool", job)
    return result


def _timed(function, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


def _stage_seconds(chunks, stages, repeats: int = 3) -> list[float]:
    """Best-of-`repeats` seconds of each stage over all chunks, the stages run one after the
    other on each chunk (as scoring runs them, so caches and the allocator see what they see
    in a real pass)."""
    best = [float("inf")] * len(stages)
    for _ in range(repeats):
        spent = [0.0] * len(stages)
        for chunk in chunks:
            value = chunk
            for i, stage in enumerate(stages):
                began = time.perf_counter()
                value = stage(value)
                spent[i] += time.perf_counter() - began
        best = [min(b, t) for b, t in zip(best, spent, strict=True)]
    return best


def profile(args, model, pool_dir: Path, job) -> dict:
    """Seconds per 1,000,000 samples of each stage of scoring (rows of `profile_rows` read from
    the pool, then chunks of the job's chunk size in memory): the read, the prefix (once per
    sample), the head (a dropout -> linear head runs as one product of the K masked weight
    matrices, `BayesianModule._folded_log_probs`), BALD; the same head run the K-fold way
    (features repeated to B*K rows, as the zoo's networks run), for comparison; the whole of
    `inference.score_pool`; and `shard_scores`'s rate at other chunk sizes."""
    from baldflow.acquisition.scores import bald
    from baldflow.compute.sharding import READ_ROWS, shard_scores
    from baldflow.data.pool_formats import open_pool
    from baldflow.inference import score_pool

    rows = min(args.profile_rows, args.rows)
    scale = 1e6 / rows
    progress(f"profiling the stages of scoring on {rows:,} rows")
    with open_pool(pool_dir) as pool:

        def read():
            for s in range(0, rows, READ_ROWS):
                pool.rows(s, min(s + READ_ROWS, rows))

        t_read = _timed(read)
        x = pool.rows(0, rows)
    k, c, chunk = args.k, args.classes, job.chunk_size
    chunks = [x[s : s + chunk] for s in range(0, rows, chunk)]
    out: dict = {"read (DiskPool.rows)": t_read * scale}
    with torch.inference_mode():
        model.eval()
        model.resample_masks(k, torch.Generator().manual_seed(0))
        layers = model._dropout_then_linear()
        if layers is None or not model.fold_dropout_linear:
            raise SystemExit("the head is not one dropout and one linear layer: nothing to fold")
        stages = {
            "prefix: Linear(D, 256) + ReLU, once per sample": model.prefix,
            "head: K masked weight matrices, one product, log-softmax": (
                lambda f: model._folded_log_probs(f, k, layers)
            ),
            "BALD (acquisition.scores.bald)": bald,
        }
        seconds = _stage_seconds(chunks, list(stages.values()))
        out.update({name: t * scale for name, t in zip(stages, seconds, strict=True)})
        out["sum of the stages (in memory)"] = sum(seconds) * scale
        repeated = {
            "prefix": model.prefix,
            "head run K-fold: B*K rows, mask, Linear, log_softmax (for comparison)": (
                lambda f: torch.log_softmax(model._run_head(f, k), -1).view(-1, k, c)
            ),
        }
        seconds = _stage_seconds(chunks, list(repeated.values()))
        name = list(repeated)[1]
        out[name] = seconds[1] * scale
        probe = model.prefix(chunks[0])
        folded = model._folded_log_probs(probe, k, layers)
        reference = torch.log_softmax(model._run_head(probe, k), -1).view(-1, k, c)
        out["max |log-prob difference|, one product vs K-fold"] = float(
            (folded - reference).abs().max()
        )
        out["end to end in memory: inference.score_pool"] = (
            _timed(lambda: score_pool(model, x, "bald", k, torch.Generator().manual_seed(0), chunk))
            * scale
        )
    by_chunk = {}
    for size in args.profile_chunks:
        seconds_ = _timed(
            lambda size=size: shard_scores(dataclasses.replace(job, chunk_size=size), 0, rows), 2
        )
        by_chunk[size] = rows / seconds_
    out["samples/s of shard_scores by chunk size"] = by_chunk
    for name, value in out.items():
        progress(f"  {name}: {value}")
    return out


# ------------------------------------------------------------------------------ memory (B)
def child_main(args) -> int:
    """Score rows [0, args.rows) of the pool in this fresh process; print JSON."""
    from flows.scoring import LOCAL_SHARD_ROWS

    torch.set_num_threads(1)
    job = make_job(Path(args.model_dir), Path(args.pool_dir), args.k, args.chunk_size)
    score_rows(job, min(8192, args.rows), LOCAL_SHARD_ROWS)  # imports, model load, warm-up
    # ru_maxrss survives execve on Linux: a child forked from a big parent inherits its peak.
    # VmHWM belongs to this process's own memory since exec; reset, it is scoring's alone.
    before = _status_mb("VmHWM")
    rss_before = _status_mb("VmRSS")
    reset = reset_peak_rss()
    seconds, checksum = score_rows(job, args.rows, LOCAL_SHARD_ROWS)
    scoring_peak = _status_mb("VmHWM") if reset else None
    result = {
        "rows": args.rows, "seconds": seconds, "checksum": checksum,
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "peak_before_scoring_mb": before, "rss_before_scoring_mb": rss_before,
        "peak_scoring_mb": scoring_peak,
        "process_peak_mb": max(before or 0.0, scoring_peak or 0.0),
    }  # fmt: skip
    print(json.dumps(result))
    return 0


def part_b(args, source: Path, model_dir: str, chunk: int) -> dict:
    results = {}
    for rows in sorted({min(args.rows, 250_000), args.rows}):
        progress(f"memory: scoring {rows:,} rows in a fresh process")
        command = [
            sys.executable, str(Path(__file__).resolve()), "--child", "--rows", str(rows),
            "--k", str(args.k), "--pool-dir", str(source / "pool"), "--model-dir", model_dir,
            "--chunk-size", str(chunk),
        ]  # fmt: skip
        done = subprocess.run(command, env=child_env(), capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"memory child failed:\n{done.stderr[-4000:]}")
        results[rows] = json.loads(done.stdout.strip().splitlines()[-1])
        r = results[rows]
        progress(f"  {rows:,} rows: peak RSS while scoring {r['peak_scoring_mb']} MB, process "
                 f"peak {r['process_peak_mb']:.0f} MB (ru_maxrss {r['ru_maxrss_mb']:.0f} MB, "
                 f"inherited across exec), {rows / r['seconds']:,.0f} samples/s")  # fmt: skip
    return results


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(HERE), str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


# ------------------------------------------------------------------------------- round (C)
ROUND_LINE = re.compile(
    r"round (\d+): trained on (\d+) labels, test accuracy ([\d.]+); acquired (\d+) by (\S+) "
    r"\(compute ([\d.]+) s, bookkeeping ([\d.]+) s\)"
)
SCORED_LINE = re.compile(
    r"round (\d+): scored (\d+) samples in (\d+) shards \((\S+)\) in ([\d.]+) s"
)


def part_c(args, source: Path, work: Path) -> dict:
    workspace = work / "ws"
    baldflow = REPO / ".venv" / "bin" / "baldflow"
    if not baldflow.exists():
        baldflow = Path(sys.executable).with_name("baldflow")
    command = [str(baldflow), "run", "--workspace", str(workspace)]
    for setting in (
        "data.source=disk", f"data.root={source}", f"model.name={MODEL_NAME}",
        "campaign.rounds=1", "campaign.initial_per_class=10", "acquisition.batch_size=10",
        f"acquisition.mc_samples={args.k}", "training.max_epochs=20", "campaign.name=frozen-bench",
    ):  # fmt: skip
        command += ["--set", setting]
    progress("round: " + " ".join(command))
    started = time.perf_counter()
    lines: list[str] = []
    with subprocess.Popen(command, env=child_env(), cwd=work, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as process:  # fmt: skip
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if ROUND_LINE.search(line) or SCORED_LINE.search(line) or "Traceback" in line:
                progress("  " + line.rstrip()[-200:])
    wall = time.perf_counter() - started
    output = "".join(lines)
    (work / "round-output.txt").write_text(output)
    if process.returncode != 0:
        sys.stderr.write(output[-6000:])
        raise SystemExit(f"baldflow run failed ({process.returncode}); output above")
    result: dict = {"wall": wall, "command": command}
    for match in ROUND_LINE.finditer(output):
        result[f"round{match.group(1)}"] = {
            "train_size": int(match.group(2)), "test_accuracy": float(match.group(3)),
            "compute": float(match.group(6)), "bookkeeping": float(match.group(7)),
        }  # fmt: skip
    for match in SCORED_LINE.finditer(output):
        result["scored"] = {"samples": int(match.group(2)), "shards": int(match.group(3)),
                            "seconds": float(match.group(5))}  # fmt: skip
    result["metrics"] = round_metrics(workspace)
    return result


def round_metrics(workspace: Path) -> dict:
    """Round 1's MLflow metrics (seconds_*), from the workspace's MLflow store."""
    try:
        import mlflow

        uri = f"sqlite:///{(workspace / 'mlflow' / 'mlflow.db').resolve()}"
        client = mlflow.MlflowClient(tracking_uri=uri)
        runs = []
        for experiment in client.search_experiments():
            runs += client.search_runs([experiment.experiment_id])
        for run in runs:
            metrics = run.data.metrics
            if "seconds_compute" in metrics and metrics.get("acquired", 0) > 0:
                return {k: v for k, v in metrics.items() if k.startswith("seconds_")}
    except Exception as error:  # noqa: BLE001 (the metrics are a detail of the report)
        return {"error": f"{type(error).__name__}: {error}"}
    return {}


# ---------------------------------------------------------------------------------- main
def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def summary(args, written: dict, a: dict, b: dict, c: dict | None) -> None:
    rows: list[tuple[str, str, str, str]] = []
    rows.append(("pool write (not a goal)", f"{written['seconds']:.1f} s, "
                 f"{written['bytes'] / 1e9:.2f} GB", "-", "-"))  # fmt: skip
    rows.append(("model split", a["split"], "traced", verdict(a["split"] == "traced")))
    cpu = a["cpu"]
    rows.append(("   scoring runs' CPU", f"user {cpu['user_s']:.1f} s, sys {cpu['sys_s']:.1f} s "
                 f"of {cpu['wall_s']:.1f} s wall; {cpu['minor_faults']:,} minor faults; load "
                 + "/".join(f"{v:.1f}" for v in cpu["load_1min"]), "-", "-"))  # fmt: skip
    rows.append((f"1. BALD scoring, N={args.rows:,}, K={args.k}, chunk {a['chunk_size']}",
                 f"{a['rate']:,.0f} samples/s/core", f">= {GOAL_RATE:,.0f}",
                 verdict(a["rate"] >= GOAL_RATE)))  # fmt: skip
    profile_ = a.get("profile", {})
    if "end to end in memory: inference.score_pool" in profile_:
        read = profile_["read (DiskPool.rows)"]
        base = profile_["end to end in memory: inference.score_pool"] + read
        rows.append(("   same conditions: inference.score_pool in memory + read",
                     f"~{1e6 / base:,.0f} samples/s/core", "-", "-"))  # fmt: skip
    peaks = {n: r["peak_scoring_mb"] or r["process_peak_mb"] for n, r in b.items()}
    for n, r in b.items():
        rows.append((f"3. peak RSS scoring N={n:,}", f"{peaks[n]:.0f} MB while scoring "
                     f"(process peak {r['process_peak_mb']:.0f} MB, "
                     f"{n / r['seconds']:,.0f} samples/s)", "flat in N", "-"))  # fmt: skip
    if len(peaks) == 2:
        small, large = (peaks[n] for n in sorted(peaks))
        ratio = large / small
        rows.append(("3. peak RSS ratio 1M / 250k", f"{ratio:.3f}", f"<= {GOAL_RSS_RATIO}",
                     verdict(ratio <= GOAL_RSS_RATIO)))  # fmt: skip
    if c is not None:
        r1 = c.get("round1")
        if r1:
            total = r1["compute"] + r1["bookkeeping"]
            rows.append(("2. round 1: compute + bookkeeping",
                         f"{total:.1f} s ({r1['compute']:.1f} + {r1['bookkeeping']:.1f})",
                         f"< {GOAL_ROUND_S:.0f} s", verdict(total < GOAL_ROUND_S)))  # fmt: skip
            m = c.get("metrics", {})
            parts = ", ".join(f"{k[8:]} {m[k]:.2f}" for k in (
                "seconds_train", "seconds_evaluate", "seconds_score", "seconds_select",
                "seconds_dvc", "seconds_git") if k in m)  # fmt: skip
            if parts:
                rows.append(("   round 1 parts (MLflow, s)", parts, "-", "-"))
            rows.append(("   round 1 test accuracy", f"{r1['test_accuracy']:.3f} "
                         f"({r1['train_size']} labels)", "-", "-"))  # fmt: skip
        else:
            rows.append(("2. round 1", "no round line found", f"< {GOAL_ROUND_S:.0f} s", "FAIL"))
        rows.append(("   whole `baldflow run` wall (incl. Prefect start, round 0)",
                     f"{c['wall']:.1f} s", "-", "-"))  # fmt: skip
    widths = [max(len(r[i]) for r in rows + [("figure", "value", "goal", "result")])
              for i in range(4)]  # fmt: skip
    print()
    for row in [("figure", "value", "goal", "result"), tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    if profile_:
        print("\nwhere scoring time goes (seconds per 1,000,000 samples, one core):")
        for name, value in profile_.items():
            if isinstance(value, dict):
                print(f"  {name}: " + ", ".join(f"{k}: {v:,.0f}" for k, v in value.items()))
            elif "difference" in name:
                print(f"  {name}: {value:.2e}")
            else:
                print(f"  {name}: {value:.2f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="inputs per forward pass (default: acquisition.chunk_size)",
    )
    parser.add_argument("--out", type=Path, default=Path("/tmp/baldflow-frozen-bench"))
    parser.add_argument("--skip-round", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--profile-rows", type=int, default=65_536)
    parser.add_argument("--profile-chunks", type=int, nargs="*", default=[256, 1024, 4096])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pool-dir", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for path in (str(HERE), str(REPO)):
        if path not in sys.path:
            sys.path.insert(0, path)
    if args.child:
        return child_main(args)
    work = args.out
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    source = work / "source"
    try:
        written = write_source(source, args)
        a = part_a(args, source, work)
        b = {} if args.skip_memory else part_b(args, source, a["model_dir"], a["chunk_size"])
        c = None if args.skip_round else part_c(args, source, work)
        summary(args, written, a, b, c)
        if c is not None:
            print("\nround command: PYTHONPATH=" + str(HERE) + " " + " ".join(c["command"]))
    finally:
        if args.keep:
            progress(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
