"""Acquisition speed: BALD scoring, PowerBALD selection and BatchBALD, optionally against peers.

    python benchmarks/acquisition.py            # baldflow only
    python benchmarks/acquisition.py --peers    # plus batchbald_redux and baal (the bench extra)
    python benchmarks/acquisition.py --plain    # plus baldflow's own non-lazy greedy BatchBALD

Inputs are synthetic log-probabilities from a fixed seed: a per-point class preference plus
per-sample noise of a per-point strength, so BALD scores spread from ~0 to ~log C.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from baldflow.acquisition.batchbald import batchbald
from baldflow.acquisition.scores import bald
from baldflow.acquisition.selection import select


def synthetic_log_probs(N: int, K: int, C: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    preference = torch.randn(N, 1, C, generator=generator) * 2.5
    noise = torch.randn(N, K, C, generator=generator) * torch.rand(N, 1, 1, generator=generator) * 2
    return torch.log_softmax(preference + noise, -1)


def seconds(run: Callable[[], object], repeats: int = 1) -> float:
    """Best wall-clock time of `repeats` runs (the least disturbed by other work)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def report(name: str, ours: float, theirs: dict[str, float | None]) -> None:
    print(f"{name:<44} baldflow {ours:9.3f} s", end="")
    for peer, value in theirs.items():
        if value is None:
            print(f"   {peer}: not installed", end="")
        else:
            print(f"   {peer} {value:9.3f} s ({value / ours:6.1f}x)", end="")
    print(flush=True)


def try_import(module: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        return None


def bench_scoring(args) -> None:
    log_probs = synthetic_log_probs(args.scoring_n, args.k, args.c, seed=0)  # float32 in memory
    generator = torch.Generator().manual_seed(0)
    scores_N = bald(log_probs)
    t_bald = seconds(lambda: bald(log_probs), args.repeats)
    t_power = seconds(
        lambda: select(scores_N, args.batch_size, "power", generator=generator), args.repeats
    )
    peers: dict[str, float | None] = {}
    if args.peers:
        heuristics = try_import("baal.active.heuristics")
        stochastics = try_import("baal.active.heuristics.stochastics")
        if heuristics is None or stochastics is None:
            peers["baal"] = None
        else:
            # baal wants probabilities laid out [N, C, K] in numpy.
            probs_N_C_K = log_probs.exp().permute(0, 2, 1).contiguous().numpy()
            power = stochastics.PowerSampling(heuristics.BALD(), query_size=args.batch_size)
            peers["baal"] = seconds(lambda: power.get_ranks(probs_N_C_K), 1)
    label = f"BALD + power selection, N={args.scoring_n:,} K={args.k} C={args.c}"
    report(label, t_bald + t_power, peers)
    print(f"    (BALD {t_bald:.3f} s, power selection {t_power:.3f} s)")
    bench_selection(scores_N, args)


def bench_selection(scores_N: torch.Tensor, args) -> None:
    """Every selection mode on the same BALD scores, plus the inputs that take the tie paths."""
    generator = torch.Generator().manual_seed(0)
    cases = [(mode, 1.0, scores_N) for mode in ("topk", "power", "softmax", "softrank", "random")]
    cases += [
        ("power", 1e308, scores_N),  # keys rescaled; the noise is absorbed into the scores
        ("softmax", 1e308, scores_N),
        ("power", 1.0, torch.zeros_like(scores_N)),  # every key -inf: all of them tie
        ("power", 1.0, scores_N.mul(4).round().div(4)),  # a few distinct values, many ties
    ]
    print(f"selection of b={args.batch_size} from N={len(scores_N):,}:")
    for mode, coldness, values_N in cases:
        took = seconds(
            lambda m=mode, c=coldness, v=values_N: select(
                v, args.batch_size, m, coldness=c, generator=generator
            ),
            args.repeats,
        )
        distinct = int(values_N.unique().numel())
        print(f"    {mode:<9} coldness {coldness:<7g} {distinct:>9,} distinct scores {took:8.4f} s")


def bench_batchbald(args) -> None:
    log_probs = synthetic_log_probs(args.batchbald_n, args.k, args.c, seed=1)
    b, M = args.batch_size, args.num_samples

    def ours(lazy: bool):
        return batchbald(
            log_probs,
            b,
            num_samples=M,
            lazy=lazy,
            generator=torch.Generator().manual_seed(0),
            return_details=True,
        )

    start = time.perf_counter()
    picked = ours(lazy=True)
    t_ours = time.perf_counter() - start
    peers: dict[str, float | None] = {}
    if args.plain:
        peers["baldflow plain greedy"] = seconds(lambda: ours(lazy=False))
    if args.peers:
        redux = try_import("batchbald_redux.batchbald")
        if redux is None:
            peers["batchbald_redux"] = None
        else:
            start = time.perf_counter()
            theirs = redux.get_batchbald_batch(
                log_probs.double(), b, M, dtype=torch.float64, device="cpu"
            )
            peers["batchbald_redux"] = time.perf_counter() - start
            overlap = len(set(theirs.indices) & set(picked.indices.tolist()))
            print(f"    batchbald_redux picked {overlap}/{b} of the same points")
    label = f"BatchBALD, N={args.batchbald_n:,} K={args.k} C={args.c} b={b} M={M:,}"
    report(label, t_ours, peers)
    print(
        f"    ({picked.exact_steps} exact steps, then sampled; total gain "
        f"{picked.gains.sum():.4f} nats)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peers", action="store_true", help="also time batchbald_redux and baal")
    parser.add_argument("--plain", action="store_true", help="also time non-lazy greedy BatchBALD")
    parser.add_argument("--scoring-n", type=int, default=1_000_000)
    parser.add_argument("--batchbald-n", type=int, default=20_000)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--c", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--num-samples", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    bench_scoring(args)
    bench_batchbald(args)


if __name__ == "__main__":
    main()
