"""Encoding generated images for JSON answers: base64 PNG, JPEG or WebP (OpenAI's ``output_format``, with
``output_compression`` as the JPEG/WebP encoder's quality), and previews shrunk so that their longer side is at most
``max_side`` pixels (a stream may carry several per request)."""

from __future__ import annotations

import base64
import io
from typing import Any

from PIL import Image

PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
DEFAULT_QUALITY = 100  # OpenAI's default output_compression


def as_image_list(images: Any) -> list[Image.Image]:
    """A PIL image or a list of them -> list."""
    if isinstance(images, Image.Image):
        return [images]
    if isinstance(images, (list, tuple)) and all(isinstance(im, Image.Image) for im in images):
        return list(images)
    raise TypeError(f"expected PIL images, got {type(images).__name__}")


def encode_b64(image: Image.Image, output_format: str = "png", quality: int | None = None) -> str:
    """``image`` as base64 text of a ``output_format`` file (``png``, ``jpeg`` or ``webp``)."""
    buf = io.BytesIO()
    fmt = PIL_FORMATS[output_format]
    if fmt == "PNG":
        image.save(buf, format=fmt)
    else:
        image.convert("RGB").save(buf, format=fmt, quality=DEFAULT_QUALITY if quality is None else quality)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def shrunk(image: Image.Image, max_side: int) -> Image.Image:
    """A copy that fits ``max_side`` x ``max_side`` (aspect kept; never enlarged)."""
    if max(image.size) <= max_side:
        return image
    small = image.copy()
    small.thumbnail((max_side, max_side))
    return small
