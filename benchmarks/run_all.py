"""Run every speed benchmark with one command and print all their figures.

    python benchmarks/run_all.py                  # acquisition (with peers if installed), scoring
    python benchmarks/run_all.py --quick --no-peers   # small sizes, no peers: a smoke test
    python benchmarks/run_all.py --bookkeeping    # also seconds per round in Prefect/MLflow/DVC/git

Each benchmark runs in its own process (as it would alone), so one's memory and threads do not
disturb the next. Peers (batchbald_redux, baal) come from the `bench` extra:
`pip install -e '.[bench]'`.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

QUICK = {
    "acquisition.py": ["--scoring-n", "100000", "--batchbald-n", "2000", "--repeats", "1"],
    "scoring.py": ["--n", "1024", "--repeats", "1", "--memory-n", "20000"],
}


def peers_installed() -> list[str]:
    return [m for m in ("batchbald_redux", "baal") if importlib.util.find_spec(m) is not None]


def plan(quick: bool, bookkeeping: bool, peers: bool = True) -> list[tuple[str, list[str]]]:
    acquisition = ["--peers"] if peers and peers_installed() else []
    runs = [
        ("acquisition.py", acquisition + (QUICK["acquisition.py"] if quick else [])),
        ("scoring.py", QUICK["scoring.py"] if quick else []),
    ]
    if bookkeeping:
        runs.append(("bookkeeping.py", ["--set", "campaign.rounds=5"] if quick else []))
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument(
        "--bookkeeping", action="store_true", help="also run the default campaign's bookkeeping"
    )
    parser.add_argument(
        "--no-peers", action="store_true", help="skip batchbald_redux and baal even if installed"
    )
    args = parser.parse_args(argv)
    peers = [] if args.no_peers else peers_installed()
    print(
        "peers: "
        + (
            ", ".join(peers)
            if peers
            else "skipped"
            if args.no_peers
            else "not installed (pip install -e '.[bench]')"
        ),
        flush=True,
    )
    results = []
    for script, extra in plan(args.quick, args.bookkeeping, peers=not args.no_peers):
        command = [sys.executable, str(HERE / script), *extra]
        print(f"\n=== {script} {' '.join(extra)}".rstrip(), flush=True)
        started = time.perf_counter()
        # Output streams straight through: every figure a benchmark prints is shown as it comes.
        code = subprocess.run(command, check=False).returncode
        results.append((script, code, time.perf_counter() - started))
    print("\n=== summary")
    for script, code, seconds in results:
        status = "ok" if code == 0 else f"FAILED (exit {code})"
        print(f"  {script:<18} {status:<18} {seconds:7.1f} s")
    return 0 if all(code == 0 for _, code, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
