"""Learning-curve maths of the comparison: labels to reach a target, area under the curve,
and the aggregation of one strategy's campaigns over seeds."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baldflow.common import format_number

# The batch-quality evidence every round logs to MLflow (compute.evidence.batch_evidence):
# how much of the batch's summed BALD is joint information rather than overlap, and how many of
# its picks are copies of one source sample. The shadow_* ones exist only with
# acquisition.shadow_batchbald. Kept per point in the curve CSV so the report needs no MLflow.
BATCH_FIELDS = (
    "batch_joint_mi",
    "batch_bald_sum",
    "batch_redundancy",
    "batch_redundancy_ratio",
    "batch_class_entropy",
    "batch_near_duplicate_pairs",
    "shadow_overlap",
    "shadow_mi_gap",
)
# The MLflow metrics of a round run that the curve keeps (the rounds summary has none of them).
STEP_METRICS = ("seconds_score", "seconds_select", *BATCH_FIELDS)
CURVE_FIELDS = (
    "labeled",
    "test_accuracy",
    "test_nll",
    "seconds_acquisition",
    "seconds_score",
    "seconds_select",
    "seconds_train",
    *BATCH_FIELDS,
)
# Optional per-point columns; a curve may lack any of them (NaN in the CSV as an empty cell).
# Curves written before a column existed read back with it empty, so old campaigns still report.
_OPTIONAL = CURVE_FIELDS[2:]


class CurveError(ValueError):
    """A learning curve is empty, unordered or holds a value that is not a number."""


@dataclass
class Curve:
    """One campaign's learning curve: test accuracy after training on `labeled` labels."""

    labeled: list[int]
    test_accuracy: list[float]
    test_nll: list[float] = field(default_factory=list)
    seconds_acquisition: list[float] = field(default_factory=list)
    # Acquisition = scoring the pool (forward passes) + selecting the batch from the scores.
    seconds_score: list[float] = field(default_factory=list)
    seconds_select: list[float] = field(default_factory=list)
    seconds_train: list[float] = field(default_factory=list)
    batch_joint_mi: list[float] = field(default_factory=list)
    batch_bald_sum: list[float] = field(default_factory=list)
    batch_redundancy: list[float] = field(default_factory=list)
    batch_redundancy_ratio: list[float] = field(default_factory=list)
    batch_class_entropy: list[float] = field(default_factory=list)
    batch_near_duplicate_pairs: list[float] = field(default_factory=list)
    shadow_overlap: list[float] = field(default_factory=list)
    shadow_mi_gap: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.labeled:
            raise CurveError("a learning curve needs at least one point, got none")
        if len(self.test_accuracy) != len(self.labeled):
            raise CurveError(
                f"test_accuracy has {len(self.test_accuracy)} points but labeled has "
                f"{len(self.labeled)}"
            )
        for name in _OPTIONAL:
            values = getattr(self, name)
            if values and len(values) != len(self.labeled):
                raise CurveError(
                    f"{name} has {len(values)} points but labeled has {len(self.labeled)}"
                )
        if any(b <= a for a, b in zip(self.labeled, self.labeled[1:], strict=False)):
            raise CurveError(f"labeled must increase from point to point, got {self.labeled}")
        bad = next((a for a in self.test_accuracy if not 0.0 <= a <= 1.0), None)
        if bad is not None:
            raise CurveError(f"test_accuracy must lie in [0, 1], got {bad!r}")

    @classmethod
    def from_rounds(
        cls,
        rounds: Iterable[Mapping[str, Any]],
        step_seconds: Mapping[int, Mapping[str, float]] | None = None,
    ) -> Curve:
        """The curve of a campaign's rounds summary (round 0, the initial set, has no model).

        `step_seconds` maps a round number to the MLflow metrics of its round run that the
        rounds summary does not keep (STEP_METRICS: seconds_score, seconds_select and the
        batch-quality evidence); a metric a round did not log is NaN.
        """
        points = [r for r in rounds if str(r.get("test_accuracy", "")) not in ("", "None")]
        points.sort(key=lambda r: int(r["round"]))
        steps = step_seconds or {}

        def step(row: Mapping[str, Any], name: str) -> float:
            return _number(steps.get(int(row["round"]), {}).get(name))

        return cls(
            labeled=[int(r["train_size"]) for r in points],
            test_accuracy=[float(r["test_accuracy"]) for r in points],
            test_nll=[_number(r.get("test_nll")) for r in points],
            seconds_acquisition=[_number(r.get("seconds_acquisition")) for r in points],
            seconds_score=[step(r, "seconds_score") for r in points],
            seconds_select=[step(r, "seconds_select") for r in points],
            seconds_train=[_train_seconds(r) for r in points],
            **{name: [step(r, name) for r in points] for name in BATCH_FIELDS},
        )

    def rows(self) -> list[dict[str, float | int]]:
        out = []
        for i, n in enumerate(self.labeled):
            row: dict[str, float | int] = {"labeled": n, "test_accuracy": self.test_accuracy[i]}
            for name in _OPTIONAL:
                values = getattr(self, name)
                row[name] = values[i] if values else math.nan
            out.append(row)
        return out

    def write_csv(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CURVE_FIELDS, lineterminator="\n")
            writer.writeheader()
            for row in self.rows():
                writer.writerow({k: format_number(v) for k, v in row.items()})

    @classmethod
    def read_csv(cls, path: str | Path) -> Curve:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"learning curve {path} does not exist (run its campaign)")
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        if not rows:
            raise CurveError(f"learning curve {path} has no points")
        return cls(
            labeled=[int(r["labeled"]) for r in rows],
            test_accuracy=[float(r["test_accuracy"]) for r in rows],
            **{name: [_number(r.get(name)) for r in rows] for name in _OPTIONAL},
        )


def _number(value: Any) -> float:
    if value is None or value == "" or value == "None":
        return math.nan
    return float(value)


def _train_seconds(row: Mapping[str, Any]) -> float:
    """Training + evaluation seconds of a round: its compute time less the acquisition."""
    if row.get("seconds_train") not in (None, ""):
        return float(row["seconds_train"])
    return _number(row.get("seconds_compute")) - _number(row.get("seconds_acquisition"))


def labels_to_target(
    labeled: Sequence[int], accuracy: Sequence[float], target: float
) -> int | None:
    """The smallest labeled-set size whose model reaches `target` test accuracy; None when no
    point of the curve does (the target was not reached within the budget)."""
    if len(labeled) != len(accuracy):
        raise CurveError(f"labeled has {len(labeled)} points but accuracy has {len(accuracy)}")
    for n, acc in zip(labeled, accuracy, strict=True):
        if acc >= target:
            return int(n)
    return None


def area_under_curve(labeled: Sequence[int], accuracy: Sequence[float]) -> float:
    """Trapezoid area under accuracy vs labels, divided by the label range: the mean accuracy
    over the budget, in [0, 1], so campaigns of one budget compare directly. A single point
    has no range; its accuracy is the answer."""
    if len(labeled) != len(accuracy):
        raise CurveError(f"labeled has {len(labeled)} points but accuracy has {len(accuracy)}")
    if not labeled:
        raise CurveError("the area under an empty curve is undefined")
    if len(labeled) == 1:
        return float(accuracy[0])
    area = 0.0
    for i in range(1, len(labeled)):
        width = labeled[i] - labeled[i - 1]
        if width <= 0:
            raise CurveError(f"labeled must increase from point to point, got {list(labeled)}")
        area += width * (accuracy[i] + accuracy[i - 1]) / 2.0
    return area / (labeled[-1] - labeled[0])


def _mean(values: Sequence[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def _std(values: Sequence[float]) -> float:
    """Sample standard deviation (n - 1); 0 for a single value, NaN for none."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan
    if len(values) == 1:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _acquisition_seconds(curve: Curve) -> list[float]:
    """Per round, scoring + selection seconds: the rounds summary's seconds_acquisition, or
    seconds_score + seconds_select where a curve has only those."""
    if curve.seconds_acquisition and not all(math.isnan(v) for v in curve.seconds_acquisition):
        return curve.seconds_acquisition
    if curve.seconds_score and curve.seconds_select:
        return [a + b for a, b in zip(curve.seconds_score, curve.seconds_select, strict=True)]
    return []


# The batch-quality means the report shows per strategy (the rest stay in the curve CSVs).
REPORTED_BATCH_FIELDS = ("batch_joint_mi", "batch_redundancy_ratio", "batch_near_duplicate_pairs")


def summarize_campaign(curve: Curve, target: float) -> dict[str, Any]:
    """The per-campaign numbers the report aggregates; a mean over no values is NaN."""
    return {
        "labels_to_target": labels_to_target(curve.labeled, curve.test_accuracy, target),
        "auc": area_under_curve(curve.labeled, curve.test_accuracy),
        "final_accuracy": curve.test_accuracy[-1],
        "final_labeled": curve.labeled[-1],
        "acquisition_seconds": _mean(_acquisition_seconds(curve)),
        "select_seconds": _mean(curve.seconds_select),
        "train_seconds": _mean(curve.seconds_train),
        **{name: _mean(getattr(curve, name)) for name in REPORTED_BATCH_FIELDS},
        "rounds": len(curve.labeled),
    }


@dataclass
class StrategySummary:
    """One strategy's numbers over its seeds."""

    strategy: str
    seeds: int
    reached: int
    labels_to_target_mean: float
    labels_to_target_std: float
    labels_to_target_median: float
    auc_mean: float
    auc_std: float
    final_accuracy_mean: float
    acquisition_seconds_mean: float
    acquisition_seconds_std: float
    select_seconds_mean: float
    # Means over rounds and seeds of the batch-quality evidence (NaN: no campaign logged it).
    batch_joint_mi_mean: float = math.nan
    batch_redundancy_ratio_mean: float = math.nan
    batch_near_duplicate_pairs_mean: float = math.nan

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _median_censored(values: Sequence[int | None]) -> float:
    """Median of labels-to-target where None (not reached) counts as larger than any number;
    inf when the median itself was not reached."""
    ordered = sorted(math.inf if v is None else float(v) for v in values)
    n = len(ordered)
    if n == 0:
        return math.nan
    if n % 2:
        return ordered[n // 2]
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2.0


def aggregate(strategy: str, curves: Sequence[Curve], target: float) -> StrategySummary:
    """Mean and spread over seeds. Labels-to-target mean and std are over the seeds that reached
    the target (`reached` says how many); the median counts the others as "beyond the budget"."""
    if not curves:
        raise CurveError(f"strategy {strategy!r} has no campaign curves to aggregate")
    per = [summarize_campaign(c, target) for c in curves]
    hits = [p["labels_to_target"] for p in per if p["labels_to_target"] is not None]
    return StrategySummary(
        strategy=strategy,
        seeds=len(per),
        reached=len(hits),
        labels_to_target_mean=_mean([float(h) for h in hits]),
        labels_to_target_std=_std([float(h) for h in hits]),
        labels_to_target_median=_median_censored([p["labels_to_target"] for p in per]),
        auc_mean=_mean([p["auc"] for p in per]),
        auc_std=_std([p["auc"] for p in per]),
        final_accuracy_mean=_mean([p["final_accuracy"] for p in per]),
        acquisition_seconds_mean=_mean([p["acquisition_seconds"] for p in per]),
        acquisition_seconds_std=_std([p["acquisition_seconds"] for p in per]),
        select_seconds_mean=_mean([p["select_seconds"] for p in per]),
        **{f"{name}_mean": _mean([p[name] for p in per]) for name in REPORTED_BATCH_FIELDS},
    )


def mean_curve(curves: Sequence[Curve]) -> list[dict[str, float]]:
    """Per labeled-set size: mean, std, min and max test accuracy over the curves that have
    that point (campaigns of one benchmark share their label grid)."""
    by_size: dict[int, list[float]] = {}
    for curve in curves:
        for n, acc in zip(curve.labeled, curve.test_accuracy, strict=True):
            by_size.setdefault(n, []).append(acc)
    out = []
    for n in sorted(by_size):
        values = by_size[n]
        out.append(
            {
                "labeled": n,
                "accuracy_mean": _mean(values),
                "accuracy_std": _std(values),
                "accuracy_min": min(values),
                "accuracy_max": max(values),
                "seeds": len(values),
            }
        )
    return out
