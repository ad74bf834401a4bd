"""Scoring an on-disk pool in one process vs on 1 and 2 Dask workers: samples/s, memory, merge.

Why: sharded scoring (compute/sharding.py) is only worth its machinery if the workers' speed
adds up, each worker's memory stays at O(shard) rather than O(pool), the flow process holds only
candidates, and the batch stays exactly the single-process batch. This prints all four.

    python benchmarks/scaling.py --count 20000            # quick check
    python benchmarks/scaling.py                          # 200,000 images
    python benchmarks/scaling.py --pool /tmp/pool          # reuse a pool (built if absent)
    python benchmarks/scaling.py --store --count 1000000 --skip-single
                                 # the pool and the model only in object storage (Swift on
                                 # loopback, started and stopped here): workers read the pool
                                 # by byte ranges and the staged model (scale.staging)

The pool: `--count` 28x28 uint8 images written with PoolWriter by make_pool.build (noisy
Fashion-MNIST copies where its IDX files are on this machine, else synthetic). The model: the
zoo's BatchBALD-style `cnn` with random weights (seed 0), K = 20, power-BALD, batch 10. Every
run uses one torch thread per process (the job's torch_threads=1, and OMP_NUM_THREADS=1 for the
workers), so 2 workers use 2 cores and the speed-up measures the sharding, not threading.
Timings exclude starting the cluster and the workers' first imports and model load (done by
`warm_worker` on every worker first; printed separately). With --store, each worker's block
cache is read back after the pass: bytes fetched per sample against the pool's size, requests
and the hit rate.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from make_pool import build, peak_rss_mb, reset_peak_rss

from baldflow.acquisition.sharded import select_by_id
from baldflow.compute.sharding import (
    ShardedStats,
    ShardJob,
    dask_submit,
    merge_score_files,
    save_model_dir,
    score_pool_sharded,
    single_pool_scores,
)
from baldflow.data.ondisk import DiskPool
from baldflow.models import build_model
from baldflow.stack.dask_cluster import DaskCluster

SHARDS_PER_WORKER = 8


def rss_mb() -> float:
    """This process's resident set now (VmRSS), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def on_cluster(
    job: ShardJob, workers: int, home: Path, pool_bytes: int | None = None
) -> tuple[list[str], ShardedStats]:
    """Start a cluster of `workers` single-threaded worker processes, warm them, score the pool
    in SHARDS_PER_WORKER shards per worker, print what it cost, and always stop the cluster.
    `pool_bytes`: the pool is in object storage; print the workers' block cache counters."""
    from distributed import Client

    from baldflow.data.object_store import cache_stats

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cluster = DaskCluster(home, workers=workers, threads_per_worker=1, env=env)
    try:
        cluster.start()
        with Client(cluster.address, timeout=60, set_as_default=False) as client:
            from baldflow.compute.sharding import warm_worker

            began = time.perf_counter()
            warmed = client.run(warm_worker, job)
            warm = time.perf_counter() - began
            warm_rss = ", ".join(f"{w['peak_rss_mb']:.0f}" for w in warmed.values())
            client.run(cache_stats, True)
            reset_peak_rss()
            batch, stats = score_pool_sharded(job, workers * SHARDS_PER_WORKER, dask_submit(client))
            flow_peak = peak_rss_mb()
            caches = client.run(cache_stats) if pool_bytes else {}
        peaks = stats.worker_peak_rss_mb()
        slowest = max(r.seconds for r in stats.results)
        print(
            f"({'b' if workers == 1 else 'c'}) {workers} worker(s), {len(stats.results)} shards: "
            f"{stats.samples_per_second:,.0f} samples/s ({stats.seconds:.1f} s; cluster start "
            f"{cluster.startup_seconds:.1f} s, warm-up {warm:.1f} s; slowest shard "
            f"{slowest:.1f} s)"
        )
        print(
            "    worker peak RSS: "
            + ", ".join(f"pid {pid} {mb:.0f} MB" for pid, mb in sorted(peaks.items()))
            + "; shards per worker: "
            + ", ".join(f"{sum(r.pid == pid for r in stats.results)}" for pid in sorted(peaks))
            + f" (after import + model load, before scoring: {warm_rss} MB)"
        )
        print(
            f"    flow process: RSS {rss_mb():.0f} MB, peak during the pass {flow_peak:.0f} MB; "
            f"merge {stats.merge_seconds * 1e3:.2f} ms"
        )
        if caches:
            fetched = sum(c["bytes_fetched"] for c in caches.values())
            hits = sum(c["hits"] for c in caches.values())
            asked = hits + sum(c["misses"] for c in caches.values())
            print(
                f"    object store: {fetched / stats.rows:,.0f} B fetched per sample "
                f"({fetched / pool_bytes:.1%} of the pool's {pool_bytes / 1e6:,.0f} MB) in "
                f"{sum(c['requests'] for c in caches.values()):,} requests; block cache hit "
                f"rate {hits / max(asked, 1):.1%}, "
                + ", ".join(
                    f"pid {c['pid']} {c['cached_bytes'] / 2**20:.0f} MiB cached"
                    for c in caches.values()
                )  # fmt: skip
            )
        return batch, stats
    finally:
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200_000, help="pool rows (default 200000)")
    parser.add_argument(
        "--pool",
        type=Path,
        default=None,
        help="pool directory, reused when it holds a pool (default: a new one)",
    )
    parser.add_argument("--mc-samples", type=int, default=20, help="K (default 20)")
    parser.add_argument("--batch", type=int, default=10, help="batch size (default 10)")
    parser.add_argument(
        "--skip-single", action="store_true", help="no in-process run (a) (default: run it)"
    )
    parser.add_argument(
        "--store",
        action="store_true",
        help="pool and model only in object storage (default: local files)",
    )
    parser.add_argument(
        "--workers", default="1,2", help="cluster sizes to time, comma-separated (default 1,2)"
    )
    args = parser.parse_args(argv)
    sizes = [int(w) for w in args.workers.split(",")]

    with tempfile.TemporaryDirectory(prefix="baldflow-scaling-") as tmp:
        tmp = Path(tmp)
        pool_dir = args.pool or tmp / "pool"
        if (pool_dir / "pool.json").is_file():
            count = len(DiskPool.open(pool_dir))
            print(f"pool: reusing {pool_dir} ({count:,} rows)")
        else:
            built = build(pool_dir, args.count)
            count = args.count
            print(f"pool: built {count:,} rows ({built['source']}) in {built['seconds']:.1f} s")
        model = build_model("cnn", (1, 28, 28), 10, seed=0)
        save_model_dir(model, tmp / "model")
        with contextlib.ExitStack() as stack:
            model_at, pool_at, scores_at, pool_bytes = str(tmp / "model"), str(pool_dir), None, None
            if args.store:
                model_at, pool_at, pool_bytes = in_store(stack, tmp, pool_dir)
                scores_at = "s3://bench/staged/scores"
            job = ShardJob(
                model_at,
                pool_at,
                score="bald",
                mc_samples=args.mc_samples,
                mask_seed=7,
                batch_size=args.batch,
                mode="power",
                selection_seed=1,
                torch_threads=1,
            )
            print(
                f"model: cnn, K={job.mc_samples}, power-BALD batch {job.batch_size}; "
                f"{os.cpu_count()} CPUs; torch 1 thread per process"
            )
            batches, passes = {}, {}
            for workers in sizes:
                # The largest cluster also writes every shard's scores (8 bytes a sample), merged
                # afterwards, to check them against the single process's scores bit for bit.
                scored = workers == max(sizes)
                timed = dataclasses.replace(
                    job, scores_dir=(scores_at or str(tmp / "scores")) if scored else None
                )
                name = f"{workers} worker{'s' if workers > 1 else ''}"
                batches[name], passes[workers] = on_cluster(
                    timed, workers, tmp / f"dask{workers}", pool_bytes
                )
            scores_dir = scores_at or tmp / "scores"
            two = passes[max(sizes)]
            if not args.skip_single:
                reset_peak_rss()
                began = time.perf_counter()
                local_job = dataclasses.replace(job, model_dir=str(tmp / "model"),
                                                pool_dir=str(pool_dir))  # fmt: skip
                scores_N, sample_ids = single_pool_scores(local_job)
                batches["single"] = select_by_id(
                    scores_N, sample_ids, job.batch_size, job.mode, job.coldness,
                    job.selection_seed,
                )  # fmt: skip
                seconds = time.perf_counter() - began
                print(
                    f"(a) this process (run last): {count / seconds:,.0f} samples/s "
                    f"({seconds:.1f} s); peak RSS {peak_rss_mb():.0f} MB "
                    "(the whole pool as float32 in memory)"
                )
                ranges = [(r.start, r.stop) for r in two.results]
                merged = np.load(merge_score_files(scores_dir, ranges, tmp / "all-scores.npy"))
                equal = int((merged == scores_N.numpy()).sum())
                print(
                    f"scores identical ({max(sizes)} workers' shard files vs this process): "
                    f"{equal == count} ({equal:,} of {count:,} bit-identical, max |diff| "
                    f"{float(np.abs(merged - scores_N.numpy()).max()):.3g})"
                )
        if 1 in passes and 2 in passes:
            one, two = passes[1], passes[2]
            print(
                f"speed-up of 2 workers over 1: {one.seconds / two.seconds:.2f}x "
                f"({two.samples_per_second:,.0f} vs {one.samples_per_second:,.0f} samples/s)"
            )
        first = next(iter(batches.values()))
        same = all(batch == first for batch in batches.values())
        print(f"batches identical ({', '.join(batches)}): {same}")
        print(f"batch: {first}")
        return 0 if same else 1


def in_store(stack: contextlib.ExitStack, tmp: Path, pool_dir: Path) -> tuple[str, str, int]:
    """Start a Swift S3 store on loopback (stopped with `stack`), put its credentials in this
    process's environment (the workers inherit it), upload the pool and stage the model:
    (model URL, pool URL, the pool's bytes)."""
    from baldflow.compute import staging
    from baldflow.data import object_store
    from baldflow.data.object_store import ObjectURL
    from baldflow.data.ondisk import DATA_FILES, META_FILE
    from baldflow.stack.swift import SwiftS3, default_venv, ensure_venv

    store = SwiftS3(tmp / "swift", venv=ensure_venv(default_venv()))
    store.start()
    stack.callback(store.stop)
    os.environ.update(store.client_env(), AWS_ENDPOINT_URL=store.endpoint_url)
    store.create_bucket("bench")
    began = time.perf_counter()
    for name in (*DATA_FILES, META_FILE):
        object_store.upload_file(pool_dir / name, ObjectURL("bench", f"pool/{name}"))
    pool_bytes = sum((pool_dir / name).stat().st_size for name in DATA_FILES)
    cache = object_store.block_cache()  # the workers' too: they read the same variables
    model_at = staging.stage_model_dir(tmp / "model", "s3://bench/staged")
    print(
        f"object store: Swift at {store.endpoint_url}; pool uploaded ({pool_bytes / 1e6:,.0f} "
        f"MB) in {time.perf_counter() - began:.1f} s; model staged at {model_at}; block cache "
        f"{cache.capacity_bytes >> 20} MiB of {cache.block_bytes >> 10} KiB blocks per worker "
        "(BALDFLOW_S3_CACHE_MB, BALDFLOW_S3_BLOCK_KB)"
    )
    return model_at, "s3://bench/pool", pool_bytes


if __name__ == "__main__":
    sys.exit(main())
