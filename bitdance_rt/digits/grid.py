"""Laying generated images out as one picture: one row per class, one column per sample."""

from __future__ import annotations

import numpy as np

from ..errors import InvalidRequestError


def image_grid(images: np.ndarray, rows: int, scale: int = 4, gap: int = 4, background: int = 48) -> np.ndarray:
    """uint8 ``[rows · cols, H, W, 3]`` (row-major) -> one uint8 ``[H', W', 3]`` picture, every image enlarged
    ``scale`` times (nearest neighbour, so the model's pixels stay visible) with ``gap`` pixels between them."""
    if images.ndim != 4 or images.shape[0] % rows:
        raise InvalidRequestError(f"image_grid: {images.shape[0]} images do not fill {rows} rows.")
    cols = images.shape[0] // rows
    big = images.repeat(scale, axis=1).repeat(scale, axis=2)
    h, w = big.shape[1:3]
    out = np.full((rows * (h + gap) + gap, cols * (w + gap) + gap, 3), background, dtype=np.uint8)
    for k, image in enumerate(big):
        r, c = divmod(k, cols)
        out[gap + r * (h + gap):gap + r * (h + gap) + h, gap + c * (w + gap):gap + c * (w + gap) + w] = image
    return out
