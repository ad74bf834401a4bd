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

    points = _points(rounds)
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


def _points(rounds: Sequence[Mapping[str, Any]]) -> list[tuple[float, float]]:
    return [
        (float(r["train_size"]), float(r["test_accuracy"]))
        for r in rounds
        if r.get("test_accuracy") not in (None, "")
    ]


def nice_ticks(low: float, high: float, target: int = 6, *, integer: bool = False) -> list[float]:
    """About `target` round tick values (steps of 1, 2, 2.5 or 5 times a power of ten) covering
    low..high; with `integer`, steps of at least 1."""
    import math

    if not high > low:
        low, high = low - 0.5, high + 0.5
    raw = (high - low) / max(1, target - 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next((m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw), 10 * power)
    if integer:
        step = max(1.0, round(step))
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _tick_text(value: float, step: float) -> str:
    # As few decimals as show the step exactly (0.05 -> 2, 0.25 -> 2, 10 -> 0).
    decimals = next((d for d in range(7) if abs(round(step, d) - step) < 1e-9 * step), 6)
    return f"{value:.{decimals}f}"


def learning_curve_png(rounds: Sequence[Mapping[str, Any]], title: str) -> bytes:
    """The learning curve of `learning_curve_figure` as PNG bytes, drawn with Pillow.

    For the HTML report: importing and laying out matplotlib took most of a second of a report
    that should take less than three.
    """
    import io

    from PIL import Image, ImageDraw

    from baldflow.common import printable
    from baldflow.figures.thumbnails import font

    width, height = 630, 324
    left, right, top, bottom = 64, 16, 30, 46
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    text_font, title_font = font(11), font(13)
    points = _points(rounds)
    xs = [x for x, _ in points] or [0.0, 1.0]
    ys = [y for _, y in points] or [0.0, 1.0]
    x_ticks = nice_ticks(min(xs), max(xs), integer=True)
    y_ticks = nice_ticks(min(ys), max(ys), 5)
    x_low, x_high = min(x_ticks[0], min(xs)), max(x_ticks[-1], max(xs))
    y_low, y_high = min(y_ticks[0], min(ys)), max(y_ticks[-1], max(ys))
    x_pad, y_pad = 0.04 * (x_high - x_low or 1.0), 0.06 * (y_high - y_low or 1.0)
    x_low, x_high, y_low, y_high = x_low - x_pad, x_high + x_pad, y_low - y_pad, y_high + y_pad

    def px(x: float, y: float) -> tuple[float, float]:
        return (
            left + (x - x_low) / (x_high - x_low) * (width - left - right),
            height - bottom - (y - y_low) / (y_high - y_low) * (height - top - bottom),
        )

    grid, ink, line = (225, 225, 225), (40, 40, 40), (31, 119, 180)
    for tick in x_ticks:
        x, _ = px(tick, y_low)
        draw.line([(x, top), (x, height - bottom)], fill=grid)
        text = _tick_text(tick, x_ticks[1] - x_ticks[0] if len(x_ticks) > 1 else 1)
        draw.text((x, height - bottom + 4), text, fill=ink, font=text_font, anchor="ma")
    for tick in y_ticks:
        _, y = px(x_low, tick)
        draw.line([(left, y), (width - right, y)], fill=grid)
        text = _tick_text(tick, y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else 1)
        draw.text((left - 5, y), text, fill=ink, font=text_font, anchor="rm")
    draw.rectangle([left, top, width - right, height - bottom], outline=ink)
    if points:
        path = [px(x, y) for x, y in points]
        if len(path) > 1:
            draw.line(path, fill=line, width=2)
        for x, y in path:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=line)
    else:
        draw.text(px((x_low + x_high) / 2, (y_low + y_high) / 2), "no test accuracy yet",
                  fill=ink, font=text_font, anchor="mm")  # fmt: skip
    label = "labeled samples the round's model was trained on"
    draw.text(
        ((left + width - right) / 2, height - 6), label, fill=ink, font=text_font, anchor="md"
    )
    # The y label: drawn on its own strip, then turned upright.
    strip = Image.new("RGB", (height - top - bottom, 16), "white")
    ImageDraw.Draw(strip).text((strip.width / 2, 8), "test accuracy", fill=ink, font=text_font,
                               anchor="mm")  # fmt: skip
    image.paste(strip.rotate(90, expand=True), (4, top))
    # The title is a campaign name: drawn as plain text, control characters made visible.
    draw.text((width / 2, 8), printable(title), fill=ink, font=title_font, anchor="ma")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
