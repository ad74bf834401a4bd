"""Seconds that `baldflow report`, `baldflow show` and `baldflow verify` take, each in a fresh
process as a user runs them (imports included).

Runs the default campaign in a fresh workspace first unless --workspace names one that has
already run. Targets: the default campaign's report under 3 s, show under 1 s (issue 10), verify
under 3 s for the 25-round campaign. `verify` must also find it consistent (exit 0).

    python benchmarks/audit.py                        # run the default campaign, then time
    python benchmarks/audit.py --workspace DIR        # time an existing workspace
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(command: list[str], repeats: int) -> list[float]:
    """Wall seconds of each of `repeats` runs of `command` (output discarded, failures raised)."""
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, help="a workspace whose campaign has run")
    parser.add_argument("--campaign", help="(default: the workspace's only campaign)")
    parser.add_argument("--round", type=int, default=3, help="the round `show` shows")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    workspace = args.workspace
    if workspace is None or not (workspace / "data").is_dir():
        workspace = workspace or Path(tempfile.mkdtemp(prefix="baldflow-bench-")) / "ws"
        command = [sys.executable, "-m", "baldflow.cli", "run", "--workspace", str(workspace)]
        for override in args.overrides:
            command += ["--set", override]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)

    cli = [sys.executable, "-m", "baldflow.cli"]
    where = ["--workspace", str(workspace)]
    if args.campaign:
        where += ["--campaign", args.campaign]
    report = Path(tempfile.mkdtemp(prefix="baldflow-bench-")) / "report.html"
    commands = {
        "report": [*cli, "report", *where, "--output", str(report)],
        "show": [*cli, "show", *where, "--round", str(args.round)],
        "verify": [*cli, "verify", *where],
    }
    summary: dict = {"workspace": str(workspace), "load_average": os.getloadavg()[0]}
    print(f"{workspace} (load average {summary['load_average']:.1f}); seconds per run:")
    print(f"  {'command':<8} {'best':>6} {'median':>7} {'worst':>6}")
    for name, command in commands.items():
        seconds = timed(command, args.repeats)
        stats = (min(seconds), statistics.median(seconds), max(seconds))
        summary[name] = dict(zip(("best", "median", "worst"), stats, strict=True))
        print(f"  {name:<8} {stats[0]:6.2f} {stats[1]:7.2f} {stats[2]:6.2f}")
    summary["report_bytes"] = report.stat().st_size
    print(f"  report size {summary['report_bytes'] / 1024:.0f} KiB")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
