"""What reading a pool from object storage costs: samples/s, bytes fetched per sample against
the pool's size, and the block cache's hit rate (baldflow.data.object_store), on a real S3
endpoint: OpenStack Swift on loopback (baldflow.stack.swift), started and stopped here by PID.

Three passes over a pool directory uploaded to the store (28x28 uint8 images):
  sweep    every row once, in shards of --shard-rows (what a round's scoring reads);
  sparse   --sample rows read one by one at random (what training's labeled set reads);
  again    the same rows once more (served by the cache when it holds them).
The local pool directory's sweep is printed beside it for comparison.

    python benchmarks/s3_pool.py                    # 50,000 rows
    python benchmarks/s3_pool.py --rows 1000000     # 784 MB uploaded once (needs 1.6 GB disk)
    python benchmarks/s3_pool.py --cache-mb 64 --block-kb 4096
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from baldflow.data import object_store
from baldflow.data.convert import convert_pool
from baldflow.data.ondisk import PoolWriter
from baldflow.data.pool_formats import open_pool
from baldflow.stack.swift import SwiftS3, default_venv, ensure_venv

CLASSES = [f"c{i}" for i in range(10)]


def write_pool(directory: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with PoolWriter(directory, (1, 28, 28), "uint8", rows, class_names=CLASSES) as writer:
        for start in range(0, rows, 50_000):
            stop = min(rows, start + 50_000)
            x = rng.integers(0, 256, size=(stop - start, 1, 28, 28), dtype=np.uint8)
            y = rng.integers(0, len(CLASSES), size=stop - start)
            writer.write(x, y, [f"s{i:08d}" for i in range(start, stop)])


def sweep(pool, shard_rows: int) -> float:
    began = time.perf_counter()
    for start in range(0, pool.count, shard_rows):
        pool.rows(start, min(pool.count, start + shard_rows))
    return time.perf_counter() - began


def report(name: str, rows: int, seconds: float, stats: dict | None, pool_bytes: int) -> None:
    line = f"{name:<8} {rows:>10,} rows {seconds:8.2f} s {rows / seconds:>12,.0f} samples/s"
    if stats is not None:
        per = stats["bytes_fetched"] / max(rows, 1)
        line += (
            f"  {per:>10,.0f} B/sample fetched ({stats['bytes_fetched'] / pool_bytes:6.1%} of "
            f"the pool) in {stats['requests']:,} requests, hit rate {stats['hit_rate']:.1%}"
        )
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--shard-rows", type=int, default=4096)
    parser.add_argument("--sample", type=int, default=500, help="rows read one by one")
    parser.add_argument("--cache-mb", type=float, default=object_store.DEFAULT_CACHE_MB)
    parser.add_argument("--block-kb", type=int, default=object_store.DEFAULT_BLOCK_KB)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="baldflow-s3-pool-") as scratch:
        scratch = Path(scratch)
        began = time.perf_counter()
        write_pool(scratch / "pool", args.rows)
        local = open_pool(scratch / "pool")
        files = ("x.npy", "y.npy", "ids.txt")
        pool_bytes = sum((scratch / "pool" / name).stat().st_size for name in files)
        print(f"pool: {args.rows:,} rows of 1x28x28 uint8, {pool_bytes / 1e6:,.1f} MB "
              f"(written in {time.perf_counter() - began:.1f} s)")  # fmt: skip

        store = SwiftS3(scratch / "swift", venv=ensure_venv(default_venv()))
        store.start()
        try:
            os.environ.update(store.client_env(), AWS_ENDPOINT_URL=store.endpoint_url)
            store.create_bucket("bench")
            began = time.perf_counter()
            convert_pool(local, "s3://bench/pool")
            print(f"uploaded to Swift in {time.perf_counter() - began:.1f} s "
                  f"({store.endpoint_url}, single PUT per file)")  # fmt: skip
            capacity = int(args.cache_mb * (1 << 20))
            block = args.block_kb << 10
            print(f"block cache: {capacity / (1 << 20):,.0f} MiB of {block >> 10} KiB blocks\n")

            report("local", args.rows, sweep(local, args.shard_rows), None, pool_bytes)
            cache = object_store.configure_cache(capacity, block)
            remote = open_pool("s3://bench/pool")
            cache.reset_counters()
            report("sweep", args.rows, sweep(remote, args.shard_rows), cache.stats(), pool_bytes)

            rows = np.random.default_rng(1).choice(args.rows, size=min(args.sample, args.rows),
                                                   replace=False)  # fmt: skip
            for name in ("sparse", "again"):
                if name == "sparse":
                    cache = object_store.configure_cache(capacity, block)
                    remote = open_pool("s3://bench/pool")
                cache.reset_counters()
                began = time.perf_counter()
                for row in rows:
                    remote.rows(int(row), int(row) + 1)
                report(name, rows.size, time.perf_counter() - began, cache.stats(), pool_bytes)
            same = all(
                np.array_equal(remote.raw_rows(r, r + 1), local.raw_rows(r, r + 1))
                for r in rows[:50].tolist()
            )
            print(f"\nrows read from Swift equal the local pool's: {same}")
        finally:
            store.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
