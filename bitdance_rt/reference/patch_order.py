"""Patch-raster generation order of a token grid.

With P = ps * ps tokens per AR step, an ``h x w`` token grid is cut into ``ps x ps`` patches; patches are
visited in raster order and the tokens inside a patch in raster order. ``ps == 1`` is plain raster order.

- :func:`patch_raster_order` gives, for each generation position ``n``, the raster index ``row * w + col`` of the
  token generated there: ``LongTensor[h * w]``.
- :func:`to_patch_raster` turns a channels-first grid ``[B, C, h, w]`` into generation order ``[B, h * w, C]``.
- :func:`from_patch_raster` turns generation order ``[B, h * w, C]`` back into ``[B, C, h, w]``.
"""

from __future__ import annotations

import torch

from bitdance_rt.errors import InvalidRequestError


def _check_divisible(grid_h: int, grid_w: int, patch_size: int) -> None:
    if patch_size < 1 or grid_h < 1 or grid_w < 1:
        raise InvalidRequestError(
            f"patch-raster order: grid {grid_h}x{grid_w} and patch_size {patch_size} must all be positive")
    if grid_h % patch_size or grid_w % patch_size:
        raise InvalidRequestError(
            f"patch-raster order: grid {grid_h}x{grid_w} is not divisible by patch_size {patch_size}; "
            "use a grid whose sides are multiples of sqrt(P)")


def patch_raster_order(grid_h: int, grid_w: int, patch_size: int) -> torch.Tensor:
    """Raster index of the token held by each generation position, int64 ``[grid_h * grid_w]``."""
    _check_divisible(grid_h, grid_w, patch_size)
    p = patch_size
    raster = torch.arange(grid_h * grid_w, dtype=torch.int64)
    # raster index = (patch_row * p + row_in_patch) * grid_w + patch_col * p + col_in_patch
    by_coordinate = raster.view(grid_h // p, p, grid_w // p, p)
    return by_coordinate.permute(0, 2, 1, 3).reshape(-1)


def to_patch_raster(x: torch.Tensor, grid_h: int, grid_w: int, patch_size: int) -> torch.Tensor:
    """``[B, C, grid_h, grid_w]`` -> ``[B, grid_h * grid_w, C]`` in patch-raster generation order."""
    _check_divisible(grid_h, grid_w, patch_size)
    if x.ndim != 4 or tuple(x.shape[2:]) != (grid_h, grid_w):
        raise InvalidRequestError(
            f"to_patch_raster: expected a tensor [B, C, {grid_h}, {grid_w}], found shape {tuple(x.shape)}")
    batch, channels = x.shape[:2]
    p = patch_size
    split = x.reshape(batch, channels, grid_h // p, p, grid_w // p, p)
    # -> [B, patch_row, patch_col, row_in_patch, col_in_patch, C]
    return split.permute(0, 2, 4, 3, 5, 1).reshape(batch, grid_h * grid_w, channels)


def from_patch_raster(x: torch.Tensor, grid_h: int, grid_w: int, patch_size: int) -> torch.Tensor:
    """``[B, grid_h * grid_w, C]`` in patch-raster generation order -> ``[B, C, grid_h, grid_w]``."""
    _check_divisible(grid_h, grid_w, patch_size)
    if x.ndim != 3 or x.shape[1] != grid_h * grid_w:
        raise InvalidRequestError(
            f"from_patch_raster: expected a tensor [B, {grid_h * grid_w}, C], found shape {tuple(x.shape)}")
    batch, _, channels = x.shape
    p = patch_size
    split = x.reshape(batch, grid_h // p, grid_w // p, p, p, channels)
    # -> [B, C, patch_row, row_in_patch, patch_col, col_in_patch]
    return split.permute(0, 5, 1, 3, 2, 4).reshape(batch, channels, grid_h, grid_w)
