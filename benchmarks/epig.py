"""Time of EPIG scoring against BALD on the same MC log-probabilities (one torch thread).

Not part of the test run. Usage: `python benchmarks/epig.py [--n 10000] [--targets 100] [--k 20]
[--c 10] [--repeats 3] [--joint-mb 8 32 64]`. EPIG is O(N T K C^2) against BALD's O(N K C),
so the ratio shows what a round pays for choosing `*-epig` over `*-bald`.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from baldflow.acquisition import epig as epig_module
from baldflow.acquisition.epig import epig_scores
from baldflow.acquisition.scores import bald


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up: first calls pay for allocator growth and kernel selection
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--targets", type=int, default=100)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--c", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--joint-mb", type=float, nargs="*", default=[], help="also time these joint budgets"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    # float32, as inference yields them; EPIG and BALD both return float64.
    pool = torch.log_softmax(torch.randn(args.n, args.k, args.c, generator=generator) * 3, -1)
    targets = torch.log_softmax(
        torch.randn(args.targets, args.k, args.c, generator=generator) * 3, -1
    )
    result = {
        "n": args.n,
        "targets": args.targets,
        "k": args.k,
        "c": args.c,
        "threads": 1,
        "best_of": args.repeats,
        "epig_s": best_time(lambda: epig_scores(pool, targets), args.repeats),
        "bald_s": best_time(lambda: bald(pool), args.repeats),
    }
    result["epig_over_bald"] = result["epig_s"] / result["bald_s"]
    default = epig_module.DEFAULT_JOINT_BYTES
    for mb in args.joint_mb:
        epig_module.DEFAULT_JOINT_BYTES = int(mb * 2**20)
        try:
            result[f"epig_s_joint_{mb:g}MB"] = best_time(
                lambda: epig_scores(pool, targets), args.repeats
            )
        finally:
            epig_module.DEFAULT_JOINT_BYTES = default
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
