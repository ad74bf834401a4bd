"""Cost of keeping every round's full pool scores: a 1M-row score table written in shards and one
sample's scores read back, so the per-round file and the audit query stay cheap at pool scale.

    .venv/bin/python benchmarks/score_tables.py [--rows 1000000] [--shard 62500]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from baldflow.workspace.scores import (
    ScoreTableWriter,
    read_score_table,
    sample_scores,
    score_table_path,
)


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shard", type=int, default=62_500)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        campaign_dir = Path(tmp)
        path = score_table_path(campaign_dir, 3)
        rss_before = _peak_rss_mb()
        started = time.perf_counter()
        with ScoreTableWriter(path) as writer:
            for start in range(0, args.rows, args.shard):
                stop = min(start + args.shard, args.rows)
                # Ids as a repeated pool names them: origin index plus the copy.
                ids = [f"fmnist-{i // 3:06d}~r{i % 3}" for i in range(start, stop)]
                scores = rng.random(stop - start)
                keys = np.log(rng.random(stop - start)) + scores
                writer.write(ids, scores, keys)
        write_s = time.perf_counter() - started
        rss_write = _peak_rss_mb()
        size_mb = path.stat().st_size / 1e6

        probe = f"fmnist-{123:06d}~r2"
        started = time.perf_counter()
        found = sample_scores(campaign_dir, probe)
        query_s = time.perf_counter() - started
        rss_query = _peak_rss_mb()

        started = time.perf_counter()
        table = read_score_table(path)
        read_s = time.perf_counter() - started
        assert table.num_rows == args.rows and found and found[0]["round"] == 3

        print(f"rows                     {args.rows:,} in shards of {args.shard:,}")
        print(f"file size                {size_mb:.1f} MB (parquet, zstd)")
        print(f"write                    {write_s:.2f} s")
        print(f"sample_scores(one id)    {query_s * 1000:.0f} ms -> {found[0]}")
        print(f"read whole table         {read_s * 1000:.0f} ms")
        print(f"peak RSS before writing  {rss_before:.0f} MB")
        print(f"peak RSS after writing   {rss_write:.0f} MB")
        print(f"peak RSS after query     {rss_query:.0f} MB (whole-table read not yet done)")
        print(f"peak RSS after full read {_peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
