"""A frozen backbone's one-time embedding pass (model.freeze: backbone): speed, scaling, memory.

Why: freezing the backbone trades every round's full-network scoring for one embedding pass
over the pool (baldflow/compute/features.py) plus head-only rounds. That is only worth it if
the pass is at least as fast per sample as the scoring it replaces, adds up over Dask workers
as sharded scoring does, keeps its memory at O(shard) rather than O(pool), and makes a round
cheaper. This prints all four, each with pass or fail, and a summary table.

    python benchmarks/embedding_pass.py --count 20000 --skip-rounds   # quick check
    python benchmarks/embedding_pass.py                                # 200,000 rows + rounds
    python benchmarks/embedding_pass.py --source /tmp/src --keep       # reuse a source dir
    python benchmarks/embedding_pass.py --goals 1,2                    # some goals only

The pool: a campaign disk source (pool/, val/, test/; `make_pool.build_source`) of `--count`
28x28 uint8 rows, noisy Fashion-MNIST copies where its IDX files are here, else synthetic.

1. In one process, one torch thread: the zoo's `cnn` (random weights, seed 0) scoring the pool
   with K = `--mc-samples` power-BALD exactly as benchmarks/scaling.py does (its
   `single_pool_scores` + `select_by_id`), and `features.embed_shard` over the whole pool for
   the FeatureJob that `plan_features` plans for `model.name: cnn, model.freeze: backbone` on
   the disk source (the file it writes included). Pass: embedding samples/s >= scoring's.
2. `embed_shard` of `shard_ranges(count, 4 * workers)` submitted to a LocalCluster of 1 and 2
   single-threaded worker processes (OMP_NUM_THREADS=1), the shards/ directory removed before
   each pass; cluster start-up and a warm-up task (backbone load + one chunk on every worker)
   are excluded and printed separately. Pass: 2 workers >= MIN_SPEEDUP x 1 worker.
3. Peak RSS of the in-process embedding of the first N/4 and of all N rows, after resetting the
   kernel's peak mark (VmHWM). (a) as the local runner plans it (`embed_pool_here` over one
   shard per LOCAL_SHARD_ROWS rows: a single shard below 262,144 rows); (b) with shards of
   `--shard-rows` rows, for comparison. Pass: (a)'s 4N peak <= MAX_RSS_RATIO x its N peak.
4. `baldflow run` (subprocesses, fresh workspaces, this environment: a temporary Prefect server
   when PREFECT_API_URL is unset, excluded by reading each round's own seconds from its
   "round N: trained on ... (compute X s, bookkeeping Y s)" line) on a `--round-count` row
   source, once with model.freeze=none and once with model.freeze=backbone; the frozen run's
   one-time embedding is its "frozen backbone ...: features ... computed in N shards in X s"
   line. Pass: the frozen round's mean compute seconds < the full model's.

Progress lines go to stderr, results to stdout. Big files live under a /tmp directory that is
removed at the end unless --keep.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from make_pool import build_source, peak_rss_mb, reset_peak_rss
from scaling import rss_mb

# Goal 2: 2 workers must reach this multiple of 1 worker's samples/s (2.0 is linear).
MIN_SPEEDUP = 1.8
# Goal 3: the 4N peak RSS may be at most this multiple of the N peak.
MAX_RSS_RATIO = 1.25
ROUND_LINE = re.compile(
    r"round (\d+): trained on (\d+) labels, test accuracy ([\d.]+).*?"
    r"\(compute ([\d.]+) s, bookkeeping ([\d.]+) s\)"
)
SCORED_LINE = re.compile(
    r"round (\d+): scored (\d+) samples in (\d+) shards \(([^)]*)\) in ([\d.]+) s"
)
FROZEN_LINE = re.compile(
    r"frozen backbone (\w+): features (\[[^\]]*\]) of (\d+) samples "
    r"(computed in (\d+) shards|reused) in ([\d.]+) s"
)


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def campaign_source(directory: Path, count: int) -> Path:
    """A disk source of `count` rows at `directory`: reused when complete with that count,
    else built by make_pool.build_source."""
    from baldflow.data.ondisk import DiskPool

    pool = directory / "pool"
    if all((directory / part / "pool.json").is_file() for part in ("pool", "val", "test")):
        rows = len(DiskPool.open(pool))
        if rows == count:
            progress(f"source: reusing {directory} ({rows:,} rows)")
            return directory
        raise SystemExit(f"{directory} holds {rows:,} pool rows, not {count:,}")
    built = build_source(directory, count, overwrite=True)
    progress(f"source: built {count:,} rows ({built['source']}) in {built['seconds']:.1f} s")
    return directory


def frozen_config(source: Path, name: str = "embedding-pass") -> object:
    from baldflow.config import validate

    return validate(
        {
            "campaign": {"name": name},
            "data": {"source": "disk", "root": str(source)},
            "model": {"name": "cnn", "freeze": "backbone"},
        }
    )


def clear_shards(job: object) -> None:
    from baldflow.compute.features import SHARDS_DIR

    shutil.rmtree(Path(job.directory) / SHARDS_DIR, ignore_errors=True)


def embed_here(job: object, ranges: list[tuple[int, int]]) -> tuple[float, float]:
    """Embed `ranges` in this process with one torch thread, from no shard files: (seconds,
    peak RSS MB since the start of the pass)."""
    import torch

    from baldflow.compute import features

    clear_shards(job)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reset_peak_rss()
        began = time.perf_counter()
        for start, stop in ranges:
            features.embed_shard(job, start, stop)
        seconds = time.perf_counter() - began
        peak = peak_rss_mb()
    finally:
        torch.set_num_threads(threads)
    clear_shards(job)
    return seconds, peak


# ----------------------------------------------------------------------------- goal 1
def goal_single(args: argparse.Namespace, source: Path, job: object, tmp: Path) -> dict:
    from baldflow.acquisition.sharded import select_by_id
    from baldflow.compute.sharding import ShardJob, save_model_dir, single_pool_scores
    from baldflow.models import build_model

    count = job.count
    model = build_model("cnn", (1, 28, 28), 10, seed=0)
    save_model_dir(model, tmp / "model")
    score_job = ShardJob(
        str(tmp / "model"),
        str(source / "pool"),
        score="bald",
        mc_samples=args.mc_samples,
        mask_seed=7,
        batch_size=args.batch,
        mode="power",
        selection_seed=1,
        torch_threads=1,
    )
    scoring, embedding = [], []
    for repeat in range(args.repeats):
        progress(f"goal 1, pass {repeat + 1}/{args.repeats}: scoring {count:,} rows here")
        reset_peak_rss()
        began = time.perf_counter()
        scores_N, ids = single_pool_scores(score_job)
        select_by_id(scores_N, ids, score_job.batch_size, score_job.mode, score_job.coldness, 1)
        seconds = time.perf_counter() - began
        scoring.append((seconds, peak_rss_mb()))
        del scores_N, ids
        progress(f"goal 1, pass {repeat + 1}/{args.repeats}: embedding {count:,} rows here")
        embedding.append(embed_here(job, [(0, count)]))
    score_sps = [count / s for s, _ in scoring]
    embed_sps = [count / s for s, _ in embedding]
    best_score, best_embed = max(score_sps), max(embed_sps)
    ok = best_embed >= best_score
    runs = ", ".join
    print(
        f"(1) one process, 1 torch thread, {count:,} rows:\n"
        f"    scoring  (cnn, K={args.mc_samples}, power-BALD): {best_score:,.0f} samples/s per "
        f"core (passes: {runs(f'{v:,.0f}' for v in score_sps)}; "
        f"{runs(f'{s:.1f} s' for s, _ in scoring)}; peak RSS "
        f"{runs(f'{p:.0f} MB' for _, p in scoring)})\n"
        f"    embedding (embed_shard over [0, {count})): {best_embed:,.0f} samples/s per core "
        f"(passes: {runs(f'{v:,.0f}' for v in embed_sps)}; "
        f"{runs(f'{s:.1f} s' for s, _ in embedding)}; peak RSS "
        f"{runs(f'{p:.0f} MB' for _, p in embedding)})\n"
        f"    embedding / scoring: {best_embed / best_score:.2f}x -> {verdict(ok)}"
    )
    return {
        "score_sps": best_score,
        "embed_sps": best_embed,
        "ok": ok,
        "score_runs": score_sps,
        "embed_runs": embed_sps,
    }


# ----------------------------------------------------------------------------- goal 2
def _warm(job: object) -> dict:
    """On a worker: import, load the backbone and embed one chunk (no shard file written)."""
    import torch

    from baldflow.compute import features
    from baldflow.data.pool_formats import open_pool

    prefix = features.load_backbone(job)
    pool = open_pool(job.raw_dir)
    try:
        features.embed_rows(prefix, pool.rows(0, min(job.count, features.EMBED_CHUNK)))
    finally:
        pool.close()
    return {"pid": os.getpid(), "torch_threads": torch.get_num_threads()}


def on_cluster(job: object, workers: int) -> dict:
    """Embed the pool's 4 * workers shards on a fresh LocalCluster of `workers` processes."""
    import logging

    from distributed import Client, LocalCluster

    from baldflow.compute import features

    for name in ("distributed", "distributed.nanny", "distributed.scheduler"):
        logging.getLogger(name).setLevel(logging.WARNING)
    ranges = features.shard_ranges(job.count, 4 * workers)
    clear_shards(job)
    began = time.perf_counter()
    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    )
    try:
        with Client(cluster, set_as_default=False) as client:
            client.wait_for_workers(workers)
            startup = time.perf_counter() - began
            began = time.perf_counter()
            warmed = client.run(_warm, job)
            warm = time.perf_counter() - began
            client.run(reset_peak_rss)
            progress(f"goal 2: {workers} worker(s) warm, embedding {len(ranges)} shards")
            began = time.perf_counter()
            futures = [
                client.submit(features.embed_shard, job, a, b, pure=False) for a, b in ranges
            ]
            client.gather(futures)
            seconds = time.perf_counter() - began
            peaks = client.run(peak_rss_mb)
    finally:
        cluster.close()
    clear_shards(job)
    threads = sorted({w["torch_threads"] for w in warmed.values()})
    result = {
        "workers": workers,
        "shards": len(ranges),
        "seconds": seconds,
        "sps": job.count / seconds,
        "startup": startup,
        "warm": warm,
        "peaks": sorted(peaks.values()),
        "threads": threads,
    }
    print(
        f"    {workers} worker(s), {len(ranges)} shards: {result['sps']:,.0f} samples/s "
        f"({seconds:.1f} s; cluster start {startup:.1f} s, warm-up {warm:.1f} s, excluded); "
        f"torch threads per worker {threads}; worker peak RSS during the pass: "
        + ", ".join(f"{p:.0f} MB" for p in result["peaks"])
    )
    return result


def goal_dask(job: object) -> dict:
    print(f"(2) embed_shard on a LocalCluster, {job.count:,} rows, 4 shards per worker:")
    one = on_cluster(job, 1)
    two = on_cluster(job, 2)
    speedup = two["sps"] / one["sps"]
    ok = speedup >= MIN_SPEEDUP
    print(
        f"    speed-up of 2 workers over 1: {speedup:.2f}x (pass: >= {MIN_SPEEDUP}x) -> "
        f"{verdict(ok)}"
    )
    return {"one": one, "two": two, "speedup": speedup, "ok": ok}


# ----------------------------------------------------------------------------- goal 3
def goal_memory(args: argparse.Namespace, job: object) -> dict:
    from baldflow.compute import features
    from baldflow.flows.scoring import LOCAL_SHARD_ROWS

    big = job.count
    small = big // 4
    rows_bytes = math.prod(job.feature_shape) * 4
    results: dict[str, dict[int, tuple[float, float, int, float]]] = {"local": {}, "fixed": {}}
    for n in (small, big):
        plans = {
            "local": features.shard_ranges(n, max(1, -(-n // LOCAL_SHARD_ROWS))),
            "fixed": features.shard_ranges(n, max(1, -(-n // args.shard_rows))),
        }
        for plan, ranges in plans.items():
            progress(f"goal 3: embedding {n:,} rows here in {len(ranges)} shard(s) ({plan})")
            before = rss_mb()
            seconds, peak = embed_here(job, ranges)
            results[plan][n] = (peak, before, len(ranges), seconds)
    print(
        f"(3) peak RSS of the in-process embedding, N = {small:,} vs 4N = {big:,} rows "
        f"(features {list(job.feature_shape)} float32 = {rows_bytes:,} bytes a row):"
    )
    labels = {
        "local": f"(a) local runner's plan (one shard per {LOCAL_SHARD_ROWS:,} rows)",
        "fixed": f"(b) shards of {args.shard_rows:,} rows",
    }
    ratios = {}
    for plan in ("local", "fixed"):
        (p1, b1, s1, t1), (p4, b4, s4, t4) = results[plan][small], results[plan][big]
        ratios[plan] = p4 / p1
        shard = LOCAL_SHARD_ROWS if plan == "local" else args.shard_rows
        mb1, mb4 = min(small, shard) * rows_bytes / 1e6, min(big, shard) * rows_bytes / 1e6
        print(
            f"    {labels[plan]}: N {p1:.0f} MB ({s1} shard(s), {small / t1:,.0f} samples/s), "
            f"4N {p4:.0f} MB ({s4} shard(s), {big / t4:,.0f} samples/s); ratio "
            f"{p4 / p1:.2f}; RSS before each {b1:.0f} / {b4:.0f} MB; one shard's features "
            f"array: {mb1:.0f} / {mb4:.0f} MB"
        )
    ok = ratios["local"] <= MAX_RSS_RATIO
    print(f"    (a) 4N/N peak {ratios['local']:.2f} (pass: <= {MAX_RSS_RATIO}) -> {verdict(ok)}")
    return {"results": results, "ratios": ratios, "ok": ok, "small": small, "big": big}


# ----------------------------------------------------------------------------- goal 4
def baldflow_run(args: argparse.Namespace, source: Path, tmp: Path, freeze: str) -> dict:
    """One campaign in a fresh workspace; its rounds' seconds as the CLI logged them."""
    workspace = tmp / f"workspace-{freeze}"
    shutil.rmtree(workspace, ignore_errors=True)
    baldflow = Path(sys.executable).with_name("baldflow")
    command = [
        str(baldflow), "run", "--workspace", str(workspace),
        "--set", f"campaign.name=embedding-pass-{freeze}",
        "--set", "data.source=disk", "--set", f"data.root={source}",
        "--set", "campaign.rounds=2", "--set", "model.name=cnn",
        "--set", f"acquisition.mc_samples={args.mc_samples}",
        "--set", "campaign.initial_per_class=2", "--set", "training.max_epochs=10",
        "--set", f"model.freeze={freeze}",
    ]  # fmt: skip
    log = tmp / f"run-{freeze}.log"
    progress(f"goal 4: baldflow run with model.freeze={freeze} (log {log})")
    began = time.perf_counter()
    with log.open("w") as handle:
        done = subprocess.run(
            command, cwd=tmp, stdout=handle, stderr=subprocess.STDOUT, check=False
        )
    wall = time.perf_counter() - began
    text = log.read_text(errors="replace")
    rounds = {
        int(m[1]): {
            "train": int(m[2]),
            "accuracy": float(m[3]),
            "compute": float(m[4]),
            "bookkeeping": float(m[5]),
        }
        for m in ROUND_LINE.finditer(text)
    }
    for m in SCORED_LINE.finditer(text):
        if int(m[1]) in rounds:
            rounds[int(m[1])]["score"] = float(m[5])
    frozen = FROZEN_LINE.search(text)
    if done.returncode != 0 or not rounds:
        print(f"    baldflow run (freeze={freeze}) failed (exit {done.returncode}); see {log}:")
        print("\n".join("      " + line for line in text.splitlines()[-25:]))
    return {
        "freeze": freeze,
        "command": " ".join(command),
        "rc": done.returncode,
        "wall": wall,
        "rounds": rounds,
        "frozen": None
        if frozen is None
        else {
            "shape": frozen[2],
            "count": int(frozen[3]),
            "how": frozen[4],
            "seconds": float(frozen[6]),
        },
        "log": str(log),
    }


def goal_rounds(args: argparse.Namespace, source: Path, tmp: Path) -> dict:
    full = baldflow_run(args, source, tmp, "none")
    frozen = baldflow_run(args, source, tmp, "backbone")
    print(f"(4) baldflow run, {args.round_count:,}-row disk source, 2 rounds (commands below):")
    for run in (full, frozen):
        print(f"    $ {run['command']}")
        for r, v in sorted(run["rounds"].items()):
            print(
                f"    freeze={run['freeze']:<8} round {r}: trained on {v['train']}, "
                f"accuracy {v['accuracy']:.3f}, compute {v['compute']:.2f} s, bookkeeping "
                f"{v['bookkeeping']:.2f} s (of the compute, scoring: "
                f"{v.get('score', float('nan')):.2f} s)"
            )
        print(f"    freeze={run['freeze']:<8} whole command {run['wall']:.1f} s (exit {run['rc']})")
    if frozen["frozen"]:
        f = frozen["frozen"]
        print(
            f"    one-time embedding (frozen run): features {f['shape']} of {f['count']:,} "
            f"samples {f['how']} in {f['seconds']:.1f} s"
        )
    else:
        print("    one-time embedding: no 'frozen backbone' line in the frozen run's log")
    ok = bool(full["rounds"] and frozen["rounds"])
    mean = {}
    for run in (full, frozen):
        values = [v["compute"] for v in run["rounds"].values()]
        mean[run["freeze"]] = statistics.fmean(values) if values else float("nan")
    ok = ok and mean["backbone"] < mean["none"]
    print(
        f"    mean round compute: full {mean['none']:.2f} s, frozen {mean['backbone']:.2f} s "
        f"({mean['none'] / mean['backbone']:.1f}x) -> {verdict(ok)}"
    )
    return {"full": full, "frozen": frozen, "mean": mean, "ok": ok}


# ----------------------------------------------------------------------------- main
def summary(one: dict | None, two: dict | None, three: dict | None, four: dict | None) -> None:
    rows = []
    if one:
        rows.append(
            ("1 embed >= score /core", f"{one['embed_sps']:,.0f} vs {one['score_sps']:,.0f} "
             "samples/s", one["ok"])
        )  # fmt: skip
    if two:
        rows.append(
            ("2 linear in workers", f"{two['one']['sps']:,.0f} -> {two['two']['sps']:,.0f} "
             f"samples/s ({two['speedup']:.2f}x)", two["ok"])
        )  # fmt: skip
    if three:
        for plan, goal in (("local", "3 RSS flat (local plan)"), ("fixed", "3b RSS (shards)")):
            low = three["results"][plan][three["small"]][0]
            high = three["results"][plan][three["big"]][0]
            ratio = three["ratios"][plan]
            rows.append(
                (goal, f"{low:.0f} -> {high:.0f} MB ({ratio:.2f}x)", ratio <= MAX_RSS_RATIO)
            )
    if four:
        emb = four["frozen"]["frozen"]
        rows.append(
            ("4 round compute", f"full {four['mean']['none']:.2f} s, frozen "
             f"{four['mean']['backbone']:.2f} s (+ embedding "
             f"{emb['seconds'] if emb else float('nan'):.1f} s once)", four["ok"])
        )  # fmt: skip
    width = max(len(r[0]) for r in rows) if rows else 0
    print("\nsummary")
    for goal, value, ok in rows:
        print(f"  {goal:<{width}}  {verdict(ok)}  {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200_000, help="rows for goals 1-3")
    parser.add_argument("--quick", action="store_true", help="--count 20000")
    parser.add_argument("--round-count", type=int, default=50_000, help="rows for goal 4")
    parser.add_argument("--source", type=Path, default=None, help="disk source dir (reused)")
    parser.add_argument("--mc-samples", type=int, default=20)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1, help="goal 1 passes (best counts)")
    parser.add_argument("--shard-rows", type=int, default=16_384, help="goal 3 (b)")
    parser.add_argument("--skip-rounds", action="store_true", help="no goal 4")
    parser.add_argument("--only-rounds", action="store_true", help="goal 4 only")
    parser.add_argument("--goals", default="1,2,3,4", help="which goals, e.g. 1,2")
    parser.add_argument("--keep", action="store_true", help="keep the /tmp directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.count = 20_000
    goals = {int(g) for g in args.goals.split(",") if g.strip()}
    if args.skip_rounds:
        goals.discard(4)
    if args.only_rounds:
        goals &= {4}

    import torch

    from baldflow.compute import features
    from baldflow.compute.campaign_data import prepare_data

    tmp = Path(tempfile.mkdtemp(prefix="baldflow-embedding-pass-", dir="/tmp"))
    progress(f"working in {tmp}{' (kept)' if args.keep else ''}")
    one = two = three = four = None
    try:
        print(
            f"{os.cpu_count()} CPUs, torch {torch.__version__}, load average "
            f"{os.getloadavg()[0]:.2f} at the start"
        )
        if goals & {1, 2, 3}:
            source = campaign_source(args.source or tmp / "source", args.count)
            config = frozen_config(source)
            data = prepare_data(config)
            began = time.perf_counter()
            job = features.plan_features(config, data, source / "pool", tmp / "features")
            print(
                f"pool: {job.count:,} rows in {source}; "
                f"plan_features {time.perf_counter() - began:.1f} s; "
                f"backbone {job.backbone_hash[:12]}, features {list(job.feature_shape)}"
            )
            one = goal_single(args, source, job, tmp) if 1 in goals else None
            two = goal_dask(job) if 2 in goals else None
            three = goal_memory(args, job) if 3 in goals else None
        if 4 in goals:
            if args.round_count == args.count and goals & {1, 2, 3}:
                round_source = args.source or tmp / "source"
            else:
                round_source = campaign_source(tmp / "round-source", args.round_count)
            four = goal_rounds(args, round_source, tmp)
        print(f"load average at the end: {os.getloadavg()[0]:.2f}")
        summary(one, two, three, four)
    finally:
        if args.keep:
            progress(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    failed = [g for g in (one, two, three, four) if g is not None and not g["ok"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
