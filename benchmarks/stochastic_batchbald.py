"""Stochastic BatchBALD and annealed selection: seconds against greedy BatchBALD.

    python benchmarks/stochastic_batchbald.py
    python benchmarks/stochastic_batchbald.py --candidates 1000 --batch 10 --pool 100000

Prints, best of --repeats runs on one torch thread: greedy BatchBALD (lazy), stochastic BatchBALD
(power, coldness 1) lazy and plain (plain scores every candidate each step, which is what the
per-step probabilities need), with sample ids; then annealed_select_by_id (power, coldness 8 -> 1)
on a pool of scores next to select_by_id at one coldness. Inputs are synthetic MC-dropout-like
log-probabilities and BALD-like scores from a fixed seed.
"""

from __future__ import annotations

import argparse
import time

import torch

from baldflow.acquisition.annealed import annealed_select_by_id, coldness_schedule
from baldflow.acquisition.batchbald import batchbald
from baldflow.acquisition.sharded import select_by_id


def best_of(repeats, function, *args, **kwargs):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return best, result


def synthetic_log_probs(M, K, C, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shared = torch.randn(M, 1, C, generator=generator, dtype=torch.float64) * 2
    per_sample = torch.randn(M, K, C, generator=generator, dtype=torch.float64)
    spread = torch.rand(M, 1, 1, generator=generator, dtype=torch.float64) * 2
    return torch.log_softmax(shared + per_sample * spread, -1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--K", type=int, default=20)
    parser.add_argument("--C", type=int, default=10)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--num-samples", type=int, default=10_000)
    parser.add_argument("--pool", type=int, default=100_000)
    parser.add_argument("--annealed-batch", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)

    M, b, repeats = args.candidates, args.batch, args.repeats
    lp = synthetic_log_probs(M, args.K, args.C)
    ids = [f"sample-{i}" for i in range(M)]
    print(
        f"BatchBALD M={M} K={args.K} C={args.C} batch {b} num_samples {args.num_samples}, "
        f"best of {repeats}, 1 thread"
    )
    common = dict(num_samples=args.num_samples, return_details=True)
    seconds, greedy = best_of(
        repeats, batchbald, lp, b, generator=torch.Generator().manual_seed(0), **common
    )
    print(f"  greedy (lazy)                 {seconds:8.3f} s  exact steps {greedy.exact_steps}")
    for lazy in (True, False):
        seconds, picked = best_of(
            repeats,
            batchbald,
            lp,
            b,
            lazy=lazy,
            mode="power",
            coldness=1.0,
            sample_ids=ids,
            seed=0,
            **common,
        )
        overlap = len(set(picked.indices.tolist()) & set(greedy.indices.tolist()))
        print(
            f"  stochastic power beta=1 {'lazy ' if lazy else 'plain'} {seconds:8.3f} s  "
            f"total gain {picked.gains.sum():.3f} (greedy {greedy.gains.sum():.3f}), "
            f"{overlap}/{b} shared with greedy"
        )

    N, B = args.pool, args.annealed_batch
    generator = torch.Generator().manual_seed(1)
    scores = torch.rand(N, generator=generator, dtype=torch.float64) ** 3
    pool_ids = [f"sample-{i}" for i in range(N)]
    schedule = coldness_schedule(B, 8.0, 1.0)
    print(f"annealed selection N={N} batch {B}, best of {repeats}, 1 thread")
    seconds, _ = best_of(repeats, annealed_select_by_id, scores, pool_ids, B, "power", schedule, 0)
    print(f"  annealed_select_by_id power 8->1  {seconds:8.3f} s")
    seconds, _ = best_of(repeats, select_by_id, scores, pool_ids, B, "power", 1.0, 0)
    print(f"  select_by_id power 1 (one shot)   {seconds:8.3f} s")


if __name__ == "__main__":
    main()
