"""Small images of pool samples: a contact sheet for people who label, thumbnails for reports."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from baldflow.common import printable


def is_image_batch(x: Any) -> bool:
    """True for a tensor of images [N, C, H, W] with 1 (gray) or 3 (RGB) channels."""
    return getattr(x, "ndim", 0) == 4 and x.shape[1] in (1, 3)


def _displayable(image: Any):
    """One normalised [C, H, W] image as an [H, W] or [H, W, 3] array in 0..1.

    Each image is stretched to its own min..max: the pool was standardised, and per-image
    contrast is what a person needs to recognise it.
    """
    import numpy as np

    array = np.asarray(image, dtype=np.float64)
    low, high = float(array.min()), float(array.max())
    array = (array - low) / (high - low) if high > low else np.zeros_like(array)
    return array[0] if array.shape[0] == 1 else np.transpose(array, (1, 2, 0))


# A tile is about 1.3 inches wide: longer captions would run over their neighbours.
CAPTION_CHARS = 24


def caption_text(caption: Any, limit: int = CAPTION_CHARS) -> str:
    """A caption as plain text for a tile: control characters made visible, and a long one cut
    in the middle, where ids that share a folder prefix and a file suffix still differ."""
    text = printable(str(caption))
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return text[:head] + "\u2026" + text[len(text) - (limit - 1 - head) :]


def contact_sheet(
    images: Any, captions: Sequence[str], path: str | Path | None = None, *, columns: int = 10
) -> bytes:
    """A grid of the images with their captions as PNG bytes (also written to `path`).

    Captions are users' ids, drawn as plain text: `$...$` is not read as mathtext (a bad
    expression would fail the whole sheet), and glyphs the font lacks (emoji) draw as boxes.
    """
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    n = len(captions)
    cols = max(1, min(columns, n))
    rows = max(1, -(-n // cols))
    fig = Figure(figsize=(1.3 * cols, 1.5 * rows), dpi=80)
    for i in range(rows * cols):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.set_axis_off()
        if i < n:
            picture = _displayable(images[i])
            ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None)
            ax.set_title(caption_text(captions[i]), fontsize=8, parse_math=False)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from")
        fig.tight_layout()
        fig.savefig(buffer, format="png")
    data = buffer.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
