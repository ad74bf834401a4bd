"""Seconds per round in bookkeeping (Prefect, MLflow, DVC, git) against training and scoring.

Reads the round metrics that a campaign logged to MLflow; runs the default campaign in a fresh
workspace first unless --workspace names one that has already run.

    python benchmarks/bookkeeping.py                      # run the default campaign, report
    python benchmarks/bookkeeping.py --workspace DIR      # report on an existing workspace
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

PARTS = [
    ("seconds_train", "train"),
    ("seconds_evaluate", "evaluate"),
    ("seconds_score", "score pool"),
    ("seconds_select", "select batch"),
    # Assessing the batch computes on the round's model: part of seconds_compute (runs logged
    # before it was are read as they were: their evidence is then left in bookkeeping).
    ("seconds_evidence", "batch evidence"),
    ("seconds_compute", "compute, all"),
    ("seconds_dvc", "DVC add + push"),
    ("seconds_git", "git commit + tag"),
    ("seconds_register", "register model"),
    ("seconds_other", "rest of bookkeeping"),
    ("seconds_bookkeeping", "bookkeeping, all"),
    ("seconds_round", "round wall time"),
]


def round_metrics(workspace: Path, campaign: str | None) -> tuple[str, list[dict[str, float]]]:
    from mlflow.tracking import MlflowClient

    from baldflow.workspace.tracking import TAG_CAMPAIGN, TAG_KIND, local_tracking_uri

    client = MlflowClient(tracking_uri=local_tracking_uri(workspace / "mlflow"))
    experiment = client.get_experiment_by_name("baldflow")
    query = f"tags.`{TAG_KIND}` = 'round' and attributes.status = 'FINISHED'"
    if campaign:
        query += f" and tags.`{TAG_CAMPAIGN}` = '{campaign}'"
    runs = client.search_runs([experiment.experiment_id], filter_string=query, max_results=10000)
    if not runs:
        raise SystemExit(f"no finished round runs in {workspace}")
    name = runs[0].data.tags[TAG_CAMPAIGN]
    return name, [r.data.metrics for r in runs if r.data.tags[TAG_CAMPAIGN] == name]


def evidence_in_compute(metrics: dict[str, float]) -> bool:
    """Whether the run's seconds_compute includes its batch evidence (it does since the
    evidence counts as compute; an older run's compute is the four steps alone)."""
    evidence = sum(metrics.get(k, 0.0) for k in ("seconds_evidence", "seconds_shadow"))
    if not evidence:
        return True
    steps = ("seconds_train", "seconds_evaluate", "seconds_score", "seconds_select")
    without = sum(metrics.get(k, 0.0) for k in steps)
    return abs(metrics["seconds_compute"] - without) > evidence / 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path)
    parser.add_argument("--campaign")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    wall = None
    # Two cores shared with other work: the load says how far the seconds can be trusted.
    load_before = os.getloadavg()[0]
    workspace = args.workspace
    if workspace is None or not (workspace / "mlflow").exists():
        workspace = workspace or Path(tempfile.mkdtemp(prefix="baldflow-bench-")) / "ws"
        command = [sys.executable, "-m", "baldflow.cli", "run", "--workspace", str(workspace)]
        for override in args.overrides:
            command += ["--set", override]
        started = time.perf_counter()
        subprocess.run(command, check=True)
        wall = time.perf_counter() - started

    campaign, rounds = round_metrics(workspace, args.campaign)
    summary = {"campaign": campaign, "rounds": len(rounds), "campaign_wall_seconds": wall}
    evidence_in_bookkeeping = 0
    for m in rounds:
        # What the parts above leave of bookkeeping: Prefect task runs, MLflow logging, the
        # workspace's recovery check before each commit.
        parts = ["seconds_dvc", "seconds_git", "seconds_register"]
        if not evidence_in_compute(m):
            parts.append("seconds_evidence")
            evidence_in_bookkeeping += 1
        m["seconds_other"] = m["seconds_bookkeeping"] - sum(m.get(k, 0.0) for k in parts)
    print(f"campaign {campaign}: {len(rounds)} rounds (mean / median / max seconds per round)")
    for key, label in PARTS:
        values = [m[key] for m in rounds if key in m]
        if not values:
            continue
        stats = (statistics.mean(values), statistics.median(values), max(values))
        summary[key] = dict(zip(("mean", "median", "max"), stats, strict=True))
        print(f"  {label:<20} {stats[0]:7.3f} {stats[1]:7.3f} {stats[2]:7.3f}")
    if evidence_in_bookkeeping:
        print(
            f"  ({evidence_in_bookkeeping} round(s) logged before the batch evidence counted as "
            "compute: their evidence is in bookkeeping, not in compute)"
        )
    compute = [m["seconds_compute"] for m in rounds]
    bookkeeping = [m["seconds_bookkeeping"] for m in rounds]
    share = sum(bookkeeping) / (sum(bookkeeping) + sum(compute))
    summary["bookkeeping_share"] = share
    print(f"  bookkeeping share of round time: {share:.1%}")
    if wall is not None:
        startup = wall - sum(m["seconds_round"] for m in rounds)
        summary["outside_rounds_seconds"] = startup
        print(
            f"  whole campaign {wall:.1f} s, of which {startup:.1f} s outside the rounds "
            "(imports, Prefect server start, MLflow store, data, round 0, learning curve)"
        )
    if wall is not None:
        load_after = os.getloadavg()[0]
        summary["load_average_1min"] = [load_before, load_after]
        print(f"  load average (1 min) {load_before:.2f} before, {load_after:.2f} after")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
