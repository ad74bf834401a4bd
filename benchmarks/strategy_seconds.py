"""Acquisition seconds of one round for every strategy on one pool: scoring plus selection,
through the same steps a campaign round runs (baldflow.compute's
scoring.score_pool and selecting.select_batch).

Not part of the test run. Usage:
    python benchmarks/strategy_seconds.py [--repeat 16] [--labeled 100] [--k 20] [--batch 10]
        [--repeats 2] [--threads 1] [--strategies power-bald batchbald ...]

The pool is digits repeated `--repeat` times with noise (16: 20,704 samples), the MC-dropout
MLP trained briefly on `--labeled` samples (timings do not depend on how well it is trained).
Prints, per strategy, the best of `--repeats` rounds: scoring, selection, total, and the total
relative to power-bald.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from baldflow.acquisition.strategies import STRATEGIES
from baldflow.compute import campaign_data, fitting, scoring, selecting
from baldflow.config import validate

COMPARED = [
    "random", "topk-bald", "power-bald", "softmax-bald", "softrank-bald", "batchbald",
    "power-epig", "badge", "coreset", "annealed-power-bald", "stochastic-batchbald",
]  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=16)
    parser.add_argument("--labeled", type=int, default=100)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--strategies", nargs="*", default=None)
    return parser.parse_args()


def config_for(strategy: str, args: argparse.Namespace):
    return validate({
        "campaign": {"name": "bench", "seed": 0, "initial_per_class": 2},
        "data": {"source": "digits", "repeat": args.repeat, "noise_std": 0.1},
        "model": {"name": "mlp"},
        "training": {"max_epochs": 3, "epoch_samples": 512, "device": "cpu",
                     "num_threads": args.threads},
        "acquisition": {"strategy": strategy, "batch_size": args.batch, "mc_samples": args.k},
    })  # fmt: skip


def main() -> None:
    args = parse_args()
    unknown = sorted(set(args.strategies or []) - set(STRATEGIES))
    if unknown:
        raise SystemExit(f"unknown strategies: {', '.join(unknown)}")
    torch.set_num_threads(args.threads)
    # The comparison's eleven (every registered name would repeat each score in three modes).
    names = args.strategies or COMPARED
    base = config_for("power-bald", args)
    data = campaign_data.prepare_data(base)
    pool_ids = data.splits.pool_ids
    truth = data.splits.pool_y.tolist()
    generator = torch.Generator().manual_seed(0)
    chosen = torch.randperm(len(pool_ids), generator=generator)[: args.labeled].tolist()
    labeled = [(pool_ids[i], int(truth[i])) for i in chosen]
    trained = fitting.train(base, data, labeled, seed=0)
    labeled_ids = {sid for sid, _ in labeled}
    print(f"pool {len(pool_ids):,} samples, {len(labeled_ids)} labeled, K={args.k}, "
          f"batch {args.batch}, {args.threads} torch thread(s)")  # fmt: skip
    rows = []
    for name in names:
        config = config_for(name, args)
        best = None
        for repeat in range(args.repeats):
            started = time.perf_counter()
            scored = scoring.score_pool(config, data, trained.model, labeled_ids, seed=repeat)
            scored_at = time.perf_counter()
            selecting.select_batch(config, scored, seed=repeat)
            done = time.perf_counter()
            timing = (scored_at - started, done - scored_at, done - started)
            best = timing if best is None or timing[2] < best[2] else best
        rows.append((name, *best))
        print(f"  {name:<22} score {best[0]:7.2f} s  select {best[1]:7.3f} s  "
              f"total {best[2]:7.2f} s", flush=True)  # fmt: skip
    power = next((total for name, _, _, total in rows if name == "power-bald"), None)
    print(json.dumps({
        name: {"score_s": round(s, 3), "select_s": round(sel, 4), "total_s": round(t, 3),
               "vs_power_bald": round(t / power, 2) if power else None}
        for name, s, sel, t in rows
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
