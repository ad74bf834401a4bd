"""Small images of pool samples: a contact sheet for people who label, thumbnails for reports."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any


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


def contact_sheet(
    images: Any, captions: Sequence[str], path: str | Path | None = None, *, columns: int = 10
) -> bytes:
    """A grid of the images with their captions as PNG bytes (also written to `path`)."""
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
            ax.set_title(str(captions[i]), fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    data = buffer.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
