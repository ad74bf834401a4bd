"""The learning-curve figure shared by the MLflow parent run and the HTML report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def learning_curve_figure(rounds: Sequence[Mapping[str, Any]], title: str):
    """Test accuracy against the labeled-set size each round's model was trained on.

    `rounds` are rows with `train_size` and `test_accuracy` (rounds without an accuracy, such
    as one waiting for labels, are left out). Returns a matplotlib Figure (Agg, no display).
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    points = [
        (float(r["train_size"]), float(r["test_accuracy"]))
        for r in rounds
        if r.get("test_accuracy") not in (None, "")
    ]
    fig = Figure(figsize=(7, 3.6), dpi=90)
    ax = fig.add_subplot()
    if points:
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o")
    ax.set_xlabel("labeled samples the round's model was trained on")
    ax.set_ylabel("test accuracy")
    # Titles carry names: `$` in one is text, not mathtext.
    ax.set_title(title, parse_math=False)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig
