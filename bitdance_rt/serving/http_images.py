"""PNG encoding of generated images for JSON responses: full-size images as base64 PNG, and previews shrunk so
that their longer side is at most ``max_side`` pixels (a progress stream sends several per request)."""

from __future__ import annotations

import base64
import io
from typing import Any

from PIL import Image


def as_image_list(images: Any) -> list[Image.Image]:
    """A PIL image or a list of them -> list."""
    if isinstance(images, Image.Image):
        return [images]
    if isinstance(images, (list, tuple)) and all(isinstance(im, Image.Image) for im in images):
        return list(images)
    raise TypeError(f"expected PIL images, got {type(images).__name__}")


def png_b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def preview_b64(image: Image.Image, max_side: int) -> str:
    """A copy shrunk to fit ``max_side`` x ``max_side`` (aspect kept; never enlarged), as base64 PNG."""
    if max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side))
    return png_b64(image)
