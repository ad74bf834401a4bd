"""Sharded stochastic selection: seconds for the noise, the reference and the shard/merge path.

    python benchmarks/sharded_selection.py                  # 1M samples, batch 100
    python benchmarks/sharded_selection.py --pool 200000 --batch 10 --repeats 3

Prints id_gumbel for the pool, select_by_id on the pool, and for 2/8/64 shards the slowest
shard's shard_candidates (the shards run side by side on workers), the merge, and whether the
merged batch equals select_by_id's (it must, for every mode). Scores are synthetic BALD-like
values from a fixed seed, with some exact zeros so power has weight-0 points.
"""

from __future__ import annotations

import argparse
import time

import torch

from baldflow.acquisition.sharded import (
    id_gumbel,
    merge_candidates,
    select_by_id,
    shard_candidates,
    sorted_pool_scores,
)

REPEATS = 1  # set from --repeats: the best of that many runs is reported


def timed(function, *args, **kwargs):
    """(result, best wall seconds of REPEATS runs): the best is the least disturbed run."""
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return result, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--modes", nargs="+", default=["power", "softmax", "softrank", "topk"])
    parser.add_argument("--shards", nargs="+", type=int, default=[2, 8, 64])
    parser.add_argument("--repeats", type=int, default=1, help="report the best of this many")
    args = parser.parse_args()
    global REPEATS
    REPEATS = max(1, args.repeats)

    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(args.pool, generator=generator, dtype=torch.float64) * 2.3
    scores[torch.rand(args.pool, generator=generator) < 0.05] = 0.0
    ids = [f"{i}~r{i % 3}" if i % 5 == 0 else str(i) for i in range(args.pool)]

    _, seconds = timed(id_gumbel, args.seed, ids)
    print(f"id_gumbel          {args.pool:>9,} ids        {seconds:7.3f} s")
    all_agree = True
    for mode in args.modes:
        expected, seconds = timed(select_by_id, scores, ids, args.batch, mode, 1.0, args.seed)
        print(f"select_by_id       {mode:<9} b={args.batch:<6} {seconds:7.3f} s")
        for shards in args.shards:
            bounds = torch.linspace(0, args.pool, shards + 1).long().tolist()
            parts = [(scores[a:b], ids[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
            pool, pool_seconds = None, 0.0
            if mode == "softrank":  # the extra pass: gather every score, sort, broadcast
                pool, pool_seconds = timed(sorted_pool_scores, [s for s, _ in parts])
            per_shard = []
            candidates = []
            for part_scores, part_ids in parts:
                candidate, seconds = timed(
                    shard_candidates, part_scores, part_ids, args.batch, mode, 1.0, args.seed,
                    pool_scores=pool,
                )  # fmt: skip
                candidates.append(candidate)
                per_shard.append(seconds)
            merged, merge_seconds = timed(merge_candidates, candidates, args.batch)
            agree = merged == expected
            all_agree &= agree
            extra = f"  sort pool {pool_seconds:.3f} s" if mode == "softrank" else ""
            print(
                f"  {shards:>3} shards: shard_candidates max {max(per_shard):.3f} s "
                f"(sum {sum(per_shard):.3f} s), merge {merge_seconds * 1e3:.2f} ms{extra}, "
                f"equal to select_by_id: {agree}"
            )
    print(f"every sharded batch equals select_by_id: {all_agree}")
    if not all_agree:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
