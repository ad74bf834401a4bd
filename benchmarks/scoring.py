"""Pool-scoring throughput and memory of baldflow's streamed MC dropout scoring.

Not part of the test run. Usage: `python benchmarks/scoring.py [--threads 1] [--skip-memory]`."""

# Throughput: the `cnn` on 28x28 inputs, K MC samples, BALD, against
#   - naive: K full forward passes of the whole network with dropout on (classic MC dropout);
#   - batchbald-cnn: the exact BatchBALD reference CNN, whose second conv runs K times.
# Memory: resident memory added by streamed BALD scoring of N = 200,000 inputs (sampled from
# /proc during the pass, in a fresh subprocess per K), next to N*K*C*8 bytes, what a full float64
# log-prob tensor would take.

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import threading
import time

import torch

from baldflow.acquisition.scores import bald
from baldflow.inference import MAX_CHUNK_INPUTS, auto_chunk_size, score_pool
from baldflow.models import build_model

C = 10
SHAPE = (1, 28, 28)


def naive_scores(model, x: torch.Tensor, k: int, generator: torch.Generator, chunk_size: int):
    """K full passes with fresh dropout masks (training-mode dropout, no gradient): the way MC
    dropout is usually written, with no shared prefix and no consistent masks."""
    model.train()
    model.set_train_generator(generator)
    out = torch.empty(x.shape[0], dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, x.shape[0], chunk_size):
            x_B = x[start : start + chunk_size]
            log_probs_B_K_C = torch.stack([model(x_B, 1)[:, 0] for _ in range(k)], dim=1)
            out[start : start + x_B.shape[0]] = bald(log_probs_B_K_C)
    model.set_train_generator(None)
    model.eval()
    return out


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up: first calls pay for allocator growth and kernel selection
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def throughput(n: int, k: int, chunk_size: int | None, repeats: int) -> dict:
    x = torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(0))
    cnn = build_model("cnn", SHAPE, C, seed=0).eval()
    reference = build_model("batchbald-cnn", SHAPE, C, seed=0).eval()
    runs = {
        "baldflow cnn (streamed, prefix once)": lambda: score_pool(
            cnn, x, "bald", k, torch.Generator().manual_seed(1), chunk_size=chunk_size
        ),
        "baldflow batchbald-cnn (conv2 in head)": lambda: score_pool(
            reference, x, "bald", k, torch.Generator().manual_seed(1), chunk_size=chunk_size
        ),
        "naive: K full passes, dropout on": lambda: naive_scores(
            cnn, x, k, torch.Generator().manual_seed(1), chunk_size or MAX_CHUNK_INPUTS
        ),
    }
    results = {name: n / best_time(fn, repeats) for name, fn in runs.items()}
    naive = results["naive: K full passes, dropout on"]
    return {
        "n": n,
        "k": k,
        "chunk_size": chunk_size,
        "samples_per_s": results,
        "speedup_vs_naive": {name: rate / naive for name, rate in results.items()},
    }


def _current_rss() -> int:
    """Resident memory now (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return 0


class PeakRss:
    """Samples the resident set every few milliseconds on a thread and keeps the maximum. The
    process-wide high-water mark (ru_maxrss) is no use here: building the pool already set it."""

    def __init__(self, interval_s: float = 0.002):
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _current_rss())
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakRss:
        self.peak = _current_rss()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _current_rss())


def memory_child(n: int, k: int, chunk_size: int) -> None:
    """Runs in a fresh process: allocate the pool and the model, then score it all; print JSON.
    The baseline is taken before any scoring, so the growth includes the first-call setup of
    torch's kernels as well as the chunk activations and scores_N."""
    chunk = chunk_size or auto_chunk_size(k)
    x = torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(0))
    model = build_model("cnn", SHAPE, C, seed=0).eval()
    baseline = _current_rss()
    started = time.perf_counter()
    with PeakRss() as sampler:
        scores_N = score_pool(
            model, x, "bald", k, torch.Generator().manual_seed(1), chunk_size=chunk
        )
    seconds = time.perf_counter() - started
    row = {
        "n": n,
        "k": k,
        "chunk_size": chunk,
        "input_bytes": x.numel() * 4,
        "baseline_rss": baseline,
        "peak_rss": sampler.peak,
        "scoring_added_bytes": sampler.peak - baseline,
        "scores_bytes": scores_N.numel() * 8,
        "full_log_probs_bytes": n * k * C * 8,
        "seconds": seconds,
    }
    print(json.dumps(row))


def memory(n: int, ks: list[int], chunk_size: int | None) -> list[dict]:
    rows = []
    for k in ks:
        command = [sys.executable, __file__, "--memory-child", str(n), str(k), str(chunk_size or 0)]
        command += ["--threads", str(torch.get_num_threads())]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096, help="pool size for throughput")
    parser.add_argument("--k", type=int, default=20, help="MC samples for throughput")
    parser.add_argument("--chunk-size", type=int, default=None, help="default: automatic")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-n", type=int, default=200_000)
    parser.add_argument("--memory-k", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--memory-child", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(*args.memory_child)
        return

    report: dict = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    chunk_label = args.chunk_size or f"auto ({auto_chunk_size(args.k)})"
    if not args.skip_throughput:
        result = throughput(args.n, args.k, args.chunk_size, args.repeats)
        report["throughput"] = result
        print(
            f"Pool scoring, cnn on 28x28, K={args.k}, N={args.n}, BALD, chunk {chunk_label} "
            f"({report['threads']} threads):"
        )
        for name, rate in result["samples_per_s"].items():
            speedup = result["speedup_vs_naive"][name]
            print(f"  {name:42s} {rate:10.0f} samples/s  {speedup:5.2f}x naive")
    if not args.skip_memory:
        rows = memory(args.memory_n, args.memory_k, args.chunk_size)
        report["memory"] = rows
        mib = 2**20
        print(f"Streamed BALD scoring of N={args.memory_n} (cnn, 28x28), peak RSS added:")
        for row in rows:
            print(
                f"  K={row['k']:4d} (chunk {row['chunk_size']}): "
                f"+{row['scoring_added_bytes'] / mib:7.1f} MiB "
                f"(inputs {row['input_bytes'] / mib:.0f} MiB held before; full N*K*C*8 "
                f"log-probs would be {row['full_log_probs_bytes'] / mib:.0f} MiB; "
                f"{row['seconds']:.1f} s, {row['n'] / row['seconds']:.0f} samples/s)"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
