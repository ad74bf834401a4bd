"""Scoring an on-disk pool in one process vs on 1 and 2 Dask workers: samples/s, memory, merge.

Why: sharded scoring (compute/sharding.py) is only worth its machinery if the workers' speed
adds up, each worker's memory stays at O(shard) rather than O(pool), the flow process holds only
candidates, and the batch stays exactly the single-process batch. This prints all four.

    python benchmarks/scaling.py --count 20000            # quick check
    python benchmarks/scaling.py                          # 200,000 images
    python benchmarks/scaling.py --pool /tmp/pool          # reuse a pool (built if absent)

The pool: `--count` 28x28 uint8 images written with PoolWriter by make_pool.build (noisy
Fashion-MNIST copies where its IDX files are on this machine, else synthetic). The model: the
zoo's BatchBALD-style `cnn` with random weights (seed 0), K = 20, power-BALD, batch 10. Every
run uses one torch thread per process (the job's torch_threads=1, and OMP_NUM_THREADS=1 for the
workers), so 2 workers use 2 cores and the speed-up measures the sharding, not threading.
Timings exclude starting the cluster and the workers' first imports and model load (done by
`warm_worker` on every worker first; printed separately).
"""

from __future__ import annotations

import argparse
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


def on_cluster(job: ShardJob, workers: int, home: Path) -> tuple[list[str], ShardedStats]:
    """Start a cluster of `workers` single-threaded worker processes, warm them, score the pool
    in SHARDS_PER_WORKER shards per worker, print what it cost, and always stop the cluster."""
    from distributed import Client

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
            reset_peak_rss()
            batch, stats = score_pool_sharded(job, workers * SHARDS_PER_WORKER, dask_submit(client))
            flow_peak = peak_rss_mb()
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
        return batch, stats
    finally:
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--pool", type=Path, default=None, help="pool directory (reused)")
    parser.add_argument("--mc-samples", type=int, default=20)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--skip-single", action="store_true", help="no in-process run (a)")
    args = parser.parse_args(argv)

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
        job = ShardJob(
            str(tmp / "model"),
            str(pool_dir),
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
        batches = {}
        batches["1 worker"], one = on_cluster(job, 1, tmp / "dask1")
        # The 2-worker pass also writes every shard's scores (8 bytes a sample), merged on
        # disk afterwards, to check them against the single process's scores bit for bit.
        scored_job = dataclasses.replace(job, scores_dir=str(tmp / "scores"))
        batches["2 workers"], two = on_cluster(scored_job, 2, tmp / "dask2")
        if not args.skip_single:
            reset_peak_rss()
            began = time.perf_counter()
            scores_N, sample_ids = single_pool_scores(job)
            batches["single"] = select_by_id(
                scores_N, sample_ids, job.batch_size, job.mode, job.coldness, job.selection_seed
            )
            seconds = time.perf_counter() - began
            print(
                f"(a) this process (run last): {count / seconds:,.0f} samples/s "
                f"({seconds:.1f} s); peak RSS {peak_rss_mb():.0f} MB "
                "(the whole pool as float32 in memory)"
            )
            ranges = [(r.start, r.stop) for r in two.results]
            merged = np.load(merge_score_files(tmp / "scores", ranges, tmp / "all-scores.npy"))
            equal = int((merged == scores_N.numpy()).sum())
            print(
                f"scores identical (2 workers' shard files vs this process): "
                f"{equal == count} ({equal:,} of {count:,} bit-identical, max |diff| "
                f"{float(np.abs(merged - scores_N.numpy()).max()):.3g})"
            )
        print(
            f"speed-up of 2 workers over 1: {one.seconds / two.seconds:.2f}x "
            f"({two.samples_per_second:,.0f} vs {one.samples_per_second:,.0f} samples/s)"
        )
        same = all(batch == batches["1 worker"] for batch in batches.values())
        print(f"batches identical ({', '.join(batches)}): {same}")
        print(f"batch: {batches['1 worker']}")
        return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
