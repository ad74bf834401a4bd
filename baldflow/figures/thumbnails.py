"""Small images of pool samples: a contact sheet for people who label, thumbnails for reports.

Drawn with Pillow and numpy: a sheet of 10 tiles takes milliseconds, where matplotlib took
about 0.3 s per sheet (most of a report's time).
"""

from __future__ import annotations

import base64
import functools
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from baldflow.common import printable

# Tile geometry in pixels: the image is scaled (nearest neighbour, whole factors) into a square
# of IMAGE_PX, with a caption line above it.
IMAGE_PX = 88
TILE_PX = 112
CAPTION_PX = 16
FONT_PX = 11
# Longer captions are cut in the middle; the tile's width may cut them further.
CAPTION_CHARS = 24


def is_image_batch(x: Any) -> bool:
    """True for a tensor of images [N, C, H, W] with 1 (gray) or 3 (RGB) channels."""
    return getattr(x, "ndim", 0) == 4 and x.shape[1] in (1, 3)


def _displayable(image: Any):
    """One normalised [C, H, W] image as an [H, W] or [H, W, 3] uint8 array.

    Each image is stretched to its own min..max: the pool was standardised, and per-image
    contrast is what a person needs to recognise it.
    """
    import numpy as np

    array = np.asarray(image, dtype=np.float64)
    low, high = float(array.min()), float(array.max())
    array = (array - low) / (high - low) if high > low else np.zeros_like(array)
    array = array[0] if array.shape[0] == 1 else np.transpose(array, (1, 2, 0))
    return np.rint(array * 255.0).astype(np.uint8)


def caption_text(caption: Any, limit: int = CAPTION_CHARS) -> str:
    """A caption as plain text for a tile: control characters made visible, and a long one cut
    in the middle, where ids that share a folder prefix and a file suffix still differ."""
    text = printable(str(caption))
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return text[:head] + "\u2026" + text[len(text) - (limit - 1 - head) :]


@functools.lru_cache(maxsize=8)
def font(size: int = FONT_PX):
    """DejaVu Sans at `size` pixels (matplotlib ships it, so the glyphs match its figures; found
    without importing matplotlib), else the system's copy, else Pillow's built-in font."""
    import importlib.util

    from PIL import ImageFont

    candidates = []
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.origin:
        mpl_data = Path(spec.origin).parent / "mpl-data"
        candidates.append(mpl_data / "fonts" / "ttf" / "DejaVuSans.ttf")
    candidates.append(Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"))
    for path in candidates:
        if path.is_file():
            try:
                return ImageFont.truetype(str(path), size)
            except OSError:
                continue
    return ImageFont.load_default(size)


def _fitted_caption(draw: Any, caption: Any, width: int) -> str:
    """The caption cut (in the middle) until it fits `width` pixels."""
    caption_font = font()
    limit = CAPTION_CHARS
    text = caption_text(caption, limit)
    while limit > 3 and draw.textlength(text, font=caption_font) > width:
        limit -= 1
        text = caption_text(caption, limit)
    return text


def _tile_image(image: Any, fit: int = IMAGE_PX):
    """The image as a PIL image that fits `fit` pixels square: small images enlarged by a
    whole factor (crisp pixels), large ones reduced."""
    from PIL import Image

    pixels = _displayable(image)
    picture = Image.fromarray(pixels, mode="L" if pixels.ndim == 2 else "RGB")
    side = max(picture.size)
    if side <= fit:
        factor = max(1, fit // side)
        return picture.resize(
            (picture.width * factor, picture.height * factor), Image.Resampling.NEAREST
        )
    scale = fit / side
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    return picture.resize(size, Image.Resampling.LANCZOS)


def contact_sheet(
    images: Any, captions: Sequence[str], path: str | Path | None = None, *, columns: int = 10
) -> bytes:
    """A grid of the images with their captions as PNG bytes (also written to `path`).

    Captions are users' ids, drawn as plain text (no markup or mathtext is read in them);
    glyphs the font lacks (emoji) draw as boxes.
    """
    from PIL import Image, ImageDraw

    n = len(captions)
    cols = max(1, min(columns, n))
    rows = max(1, -(-n // cols))
    row_px = CAPTION_PX + IMAGE_PX + 8
    sheet = Image.new("RGB", (cols * TILE_PX, rows * row_px), "white")
    draw = ImageDraw.Draw(sheet)
    for i in range(n):
        left, top = (i % cols) * TILE_PX, (i // cols) * row_px
        text = _fitted_caption(draw, captions[i], TILE_PX - 4)
        draw.text((left + TILE_PX / 2, top + 2), text, fill="black", font=font(), anchor="ma")
        picture = _tile_image(images[i])
        sheet.paste(
            picture,
            (
                left + (TILE_PX - picture.width) // 2,
                top + CAPTION_PX + (IMAGE_PX - picture.height) // 2,
            ),
        )
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    data = buffer.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def image_png(image: Any, fit: int = 256) -> bytes:
    """One pool image as PNG bytes for a person to label: contrast stretched like the contact
    sheet's tiles, enlarged by a whole factor (or reduced) to fit `fit` pixels."""
    buffer = io.BytesIO()
    _tile_image(image, fit).save(buffer, format="PNG")
    return buffer.getvalue()


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
