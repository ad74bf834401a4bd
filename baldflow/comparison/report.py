"""The comparison report: per-strategy table (CSV, markdown, DVC metrics), mean learning curves
for `dvc plots` and a PNG of the curves with a band over seeds."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from baldflow.comparison.config import BenchmarkConfig
from baldflow.comparison.curves import Curve, StrategySummary, aggregate, mean_curve

SUMMARY_FIELDS = (
    "strategy",
    "seeds",
    "reached",
    "labels_to_target_mean",
    "labels_to_target_std",
    "labels_to_target_median",
    "auc_mean",
    "auc_std",
    "final_accuracy_mean",
    "acquisition_seconds_mean",
    "acquisition_seconds_std",
    "select_seconds_mean",
    "batch_joint_mi_mean",
    "batch_redundancy_ratio_mean",
    "batch_near_duplicate_pairs_mean",
)


def read_curves(
    campaigns_dir: str | Path, strategies: Sequence[str], seeds: Sequence[int]
) -> dict[str, list[Curve]]:
    """The curves of every strategy x seed; a missing campaign is an error naming its file."""
    from baldflow.comparison.campaigns import curve_paths

    out: dict[str, list[Curve]] = {}
    for strategy in strategies:
        out[strategy] = [Curve.read_csv(curve_paths(campaigns_dir, strategy, s)[0]) for s in seeds]
    return out


def _fmt(value: float, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "not reached"
    return f"{value:.{digits}f}"


def _pm(mean: float, std: float, digits: int) -> str:
    if math.isnan(mean):
        return "not reached"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(
    summaries: Sequence[StrategySummary], target: float, budget: int | None = None
) -> str:
    """The report table as markdown: labels to target, AUC, acquisition seconds per round and
    the batch-quality means (joint MI of the batch in nats, redundancy ratio = 1 - joint MI /
    summed BALD, near-duplicate pairs per batch); "-" where the campaigns did not log them
    (curves written before they were recorded)."""
    pct = f"{target * 100:g}%"
    beyond = f" (> {budget})" if budget else ""
    header = (
        f"| strategy | labels to {pct} (mean ± sd of seeds that reached it) | reached "
        f"| median labels to {pct} | AUC (mean ± sd) | final accuracy "
        f"| acquisition s/round (score + select) | select s/round "
        f"| batch joint MI | redundancy ratio | near-duplicate pairs |"
    )
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summaries:
        median = _fmt(s.labels_to_target_median)
        if median == "not reached":
            median += beyond
        lines.append(
            f"| {s.strategy} | {_pm(s.labels_to_target_mean, s.labels_to_target_std, 0)} "
            f"| {s.reached}/{s.seeds} | {median} | {_pm(s.auc_mean, s.auc_std, 3)} "
            f"| {_fmt(s.final_accuracy_mean, 3)} "
            f"| {_pm(s.acquisition_seconds_mean, s.acquisition_seconds_std, 2)} "
            f"| {_seconds(s.select_seconds_mean)} "
            f"| {_fmt(s.batch_joint_mi_mean, 3)} | {_fmt(s.batch_redundancy_ratio_mean, 3)} "
            f"| {_fmt(s.batch_near_duplicate_pairs_mean, 2)} |"
        )
    return "\n".join(lines) + "\n"


def _seconds(value: float) -> str:
    # Selection ranges from microseconds (top-k) to seconds (BatchBALD): keep 2 significant.
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.2g}"


def _csv_cell(value: Any) -> Any:
    # A mean over nothing (a column old curves lack) is a blank cell, not "nan".
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def _json_number(value: float) -> float | None:
    # JSON has no NaN or infinity; DVC's metrics reader refuses them.
    if value is None or math.isnan(value) or math.isinf(value):
        return None
    return round(float(value), 6)


def plot_curves(
    curves: dict[str, list[Curve]],
    summaries: Sequence[StrategySummary],
    target: float,
    path: str | Path,
    title: str = "",
) -> None:
    """Learning curves (mean over seeds, band = min..max over seeds) beside acquisition time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(
        1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [2.2, 1]}
    )
    colors = plt.get_cmap("tab10")
    for i, (strategy, cs) in enumerate(curves.items()):
        rows = mean_curve(cs)
        x = [r["labeled"] for r in rows]
        mean = [r["accuracy_mean"] for r in rows]
        low = [r["accuracy_min"] for r in rows]
        high = [r["accuracy_max"] for r in rows]
        color = colors(i % 10)
        # Past ten strategies the colours repeat: the line style tells those apart.
        style = ("-", "--", ":")[(i // 10) % 3]
        left.plot(x, mean, label=strategy, color=color, linewidth=1.8, linestyle=style)
        left.fill_between(x, low, high, color=color, alpha=0.15, linewidth=0)
    left.axhline(target, color="grey", linestyle="--", linewidth=1)
    left.text(left.get_xlim()[0], target, f" target {target:g}", va="bottom", color="grey")
    left.set_xlabel("labeled samples (training set size)")
    left.set_ylabel("test accuracy")
    band = "line: mean over seeds, band: min to max"
    left.set_title(f"{title}\n{band}" if title else band, fontsize=9)
    left.grid(True, alpha=0.3)
    left.legend(loc="lower right", fontsize=9)

    names = [s.strategy for s in summaries]
    rows = range(len(names))
    total = [s.acquisition_seconds_mean for s in summaries]
    select = [s.select_seconds_mean for s in summaries]
    right.barh([r - 0.2 for r in rows], total, height=0.4, color="tab:blue", label="score + select")
    right.barh([r + 0.2 for r in rows], select, height=0.4, color="tab:orange", label="select")
    right.set_yticks(list(rows), names)
    right.set_xscale("log")
    right.invert_yaxis()
    right.set_xlabel("seconds per round (log scale)")
    right.set_title("acquisition time, mean over rounds and seeds", fontsize=9)
    right.legend(loc="upper right", fontsize=8)
    right.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Fixed metadata keeps the PNG byte-identical for identical data (no timestamp).
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def write_report(
    bench: BenchmarkConfig,
    campaigns_dir: str | Path = "data/benchmark/campaigns",
    out_dir: str | Path = "data/benchmark/report",
) -> list[StrategySummary]:
    """Aggregate the campaigns of `bench` and write the table, metrics, curves and plot."""
    curves = read_curves(campaigns_dir, bench.strategies, bench.seeds)
    target = bench.target_accuracy
    summaries = [aggregate(strategy, cs, target) for strategy, cs in curves.items()]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    with (out / "summary.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_FIELDS, lineterminator="\n")
        writer.writeheader()
        for s in summaries:
            row = s.as_dict()
            writer.writerow({k: _csv_cell(v) for k, v in row.items()})

    budget = max(c.labeled[-1] for cs in curves.values() for c in cs)
    table = markdown_table(summaries, target, budget)
    data = bench.data
    setting = (
        f"{data.source} x{data.repeat} (noise_std {data.noise_std:g}), model {bench.model.name}, "
        f"{bench.initial_per_class} initial per class, batch {bench.batch_size}, "
        f"K={bench.mc_samples}, up to {budget} labels, seeds {bench.seeds}"
    )
    (out / "summary.md").write_text(f"{setting}\n\n{table}")

    metrics: dict[str, Any] = {"target_accuracy": target}
    for s in summaries:
        metrics[s.strategy] = {
            "labels_to_target_mean": _json_number(s.labels_to_target_mean),
            "labels_to_target_median": _json_number(s.labels_to_target_median),
            "reached": s.reached,
            "auc_mean": _json_number(s.auc_mean),
            "final_accuracy_mean": _json_number(s.final_accuracy_mean),
            "acquisition_seconds_mean": _json_number(s.acquisition_seconds_mean),
            "select_seconds_mean": _json_number(s.select_seconds_mean),
            "batch_joint_mi_mean": _json_number(s.batch_joint_mi_mean),
            "batch_redundancy_ratio_mean": _json_number(s.batch_redundancy_ratio_mean),
            "batch_near_duplicate_pairs_mean": _json_number(s.batch_near_duplicate_pairs_mean),
        }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

    # One long table (a strategy column) for `dvc plots`: its template colours by strategy, so
    # the plot follows whatever benchmark.strategies lists.
    with (out / "learning_curves.csv").open("w", newline="") as handle:
        writer = None
        for strategy, cs in curves.items():
            for row in mean_curve(cs):
                record = {"strategy": strategy, **row}
                if writer is None:
                    writer = csv.DictWriter(handle, fieldnames=list(record), lineterminator="\n")
                    writer.writeheader()
                writer.writerow(
                    {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in record.items()}
                )
    plot_curves(curves, summaries, target, out / "learning_curves.png", title=setting)
    print(setting)
    print(table, end="")
    return summaries


# ------------------------------------------------------------------------------ coldness ablation
# PowerBALD's coldness in the authors' own run logs (science.md, "More from the authors' own run
# logs"): Repeated-MNIST x4, 20 initial labels, batch 10, up to 300 labels, 5 seeds; labels to
# 90% test accuracy (median over seeds) and mean test accuracy at 300 labels. Printed beside
# ours so the ablation reads as a replication: the trend over beta, not the absolute numbers
# (our data set, model and budget are smaller), is what should agree.
AUTHORS_COLDNESS = {
    0.25: (120, 0.943),
    1.0: (110, 0.957),
    4.0: (90, 0.966),
    8.0: (90, 0.967),
    16.0: (100, 0.960),
}
AUTHORS_SETTING = (
    "authors: PowerBALD on Repeated-MNIST x4, 20 initial labels, batch 10, median labels to 90% "
    "over 5 seeds / mean accuracy at 300 labels"
)
COLDNESS_FIELDS = (
    "coldness",
    "seeds",
    "reached",
    "labels_to_target_mean",
    "labels_to_target_std",
    "labels_to_target_median",
    "auc_mean",
    "final_accuracy_mean",
    "final_labeled",
    "acquisition_seconds_mean",
    "batch_joint_mi_mean",
    "batch_redundancy_ratio_mean",
    "batch_near_duplicate_pairs_mean",
    "authors_labels_to_90",
    "authors_accuracy_at_300",
)


def coldness_curve_path(campaigns_dir: str | Path, strategy: str, beta: float, seed: int) -> Path:
    """The ablation curve of one beta and seed. dvc.yaml names it with the grid value as YAML
    wrote it (1 or 1.0), run-one by hand with %g (1): whichever exists, else the %g name."""
    from baldflow.comparison.campaigns import coldness_variant, curve_paths

    candidates = [coldness_variant(beta), f"beta{float(beta)!r}", f"beta{beta}"]
    paths = [curve_paths(campaigns_dir, strategy, seed, v)[0] for v in dict.fromkeys(candidates)]
    return next((p for p in paths if p.exists()), paths[0])


def coldness_table(
    rows: Sequence[tuple[float, StrategySummary, int]],
    target: float,
    strategy: str,
    budget: int | None = None,
) -> str:
    """Markdown: labels to target and final accuracy per beta, the authors' beside them."""
    pct = f"{target * 100:g}%"
    beyond = f" (> {budget})" if budget else ""
    authors = strategy == "power-bald"
    header = (
        f"| beta | labels to {pct} (mean ± sd of seeds that reached it) | reached "
        f"| median labels to {pct} | final accuracy | at labels | AUC "
        f"| authors: labels to 90% | authors: accuracy at 300 |"
    )
    lines = [header, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for beta, s, final_labeled in rows:
        median = _fmt(s.labels_to_target_median)
        if median == "not reached":
            median += beyond
        theirs = AUTHORS_COLDNESS.get(float(beta)) if authors else None
        lines.append(
            f"| {beta:g} | {_pm(s.labels_to_target_mean, s.labels_to_target_std, 0)} "
            f"| {s.reached}/{s.seeds} | {median} | {_fmt(s.final_accuracy_mean, 3)} "
            f"| {final_labeled} | {_fmt(s.auc_mean, 3)} "
            f"| {theirs[0] if theirs else '-'} | {f'{theirs[1]:.3f}' if theirs else '-'} |"
        )
    return "\n".join(lines) + "\n"


def write_coldness_report(
    bench: BenchmarkConfig,
    campaigns_dir: str | Path = "data/benchmark/coldness",
    out_dir: str | Path = "data/benchmark/report",
) -> list[tuple[float, StrategySummary, int]]:
    """The coldness ablation (dvc stage `coldness`): per beta of benchmark.coldness_grid, labels
    to the target and final accuracy over the seeds, in coldness.md / coldness.csv /
    coldness_metrics.json beside the main report, with the authors' numbers for comparison."""
    strategy = bench.coldness_strategy
    target = bench.target_accuracy
    rows = []
    for beta in bench.coldness_grid:
        curves = [
            Curve.read_csv(coldness_curve_path(campaigns_dir, strategy, beta, seed))
            for seed in bench.seeds
        ]
        summary = aggregate(f"{strategy} beta {beta:g}", curves, target)
        rows.append((beta, summary, max(c.labeled[-1] for c in curves)))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    budget = max(r[2] for r in rows)
    table = coldness_table(rows, target, strategy, budget)
    data = bench.data
    setting = (
        f"coldness ablation of {strategy}: {data.source} x{data.repeat} (noise_std "
        f"{data.noise_std:g}), model {bench.model.name}, {bench.initial_per_class} initial per "
        f"class, batch {bench.batch_size}, K={bench.mc_samples}, up to {budget} labels, seeds "
        f"{bench.seeds}"
    )
    note = AUTHORS_SETTING if strategy == "power-bald" else ""
    (out / "coldness.md").write_text(f"{setting}\n{note}\n\n{table}")

    metrics: dict[str, Any] = {"target_accuracy": target, "strategy": strategy}
    with (out / "coldness.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLDNESS_FIELDS, lineterminator="\n")
        writer.writeheader()
        for beta, s, final_labeled in rows:
            theirs = AUTHORS_COLDNESS.get(float(beta)) if strategy == "power-bald" else None
            record = {
                "coldness": beta,
                "seeds": s.seeds,
                "reached": s.reached,
                "labels_to_target_mean": s.labels_to_target_mean,
                "labels_to_target_std": s.labels_to_target_std,
                "labels_to_target_median": s.labels_to_target_median,
                "auc_mean": s.auc_mean,
                "final_accuracy_mean": s.final_accuracy_mean,
                "final_labeled": final_labeled,
                "acquisition_seconds_mean": s.acquisition_seconds_mean,
                "batch_joint_mi_mean": s.batch_joint_mi_mean,
                "batch_redundancy_ratio_mean": s.batch_redundancy_ratio_mean,
                "batch_near_duplicate_pairs_mean": s.batch_near_duplicate_pairs_mean,
                "authors_labels_to_90": theirs[0] if theirs else "",
                "authors_accuracy_at_300": theirs[1] if theirs else "",
            }
            writer.writerow({k: _csv_cell(v) for k, v in record.items()})
            metrics[f"beta{beta:g}"] = {
                "labels_to_target_mean": _json_number(s.labels_to_target_mean),
                "labels_to_target_median": _json_number(s.labels_to_target_median),
                "reached": s.reached,
                "final_accuracy_mean": _json_number(s.final_accuracy_mean),
                "auc_mean": _json_number(s.auc_mean),
            }
    (out / "coldness_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(setting)
    print(table, end="")
    return rows
