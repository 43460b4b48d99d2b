"""Tile shapes of the row-wise kernels: up to ``max_columns`` columns per tile and, when rows are narrow, several
rows per program (about ``TILE_ELEMENTS`` elements), so narrow heads do not pay one launch slot per token."""

from __future__ import annotations

import triton

TILE_ELEMENTS = 4096
MAX_ROWS_PER_TILE = 16


def row_tile(width: int, max_columns: int) -> tuple[int, int]:
    """``(block_m, block_d)`` for rows of ``width`` channels: ``block_d`` a power of two of at most
    ``max_columns``, ``block_m`` rows filling about ``TILE_ELEMENTS``."""
    block_d = min(max_columns, triton.next_power_of_2(width))
    return max(1, min(MAX_ROWS_PER_TILE, TILE_ELEMENTS // block_d)), block_d
