"""Tile shapes of the row-wise kernels: up to ``max_columns`` columns per tile and, when rows are narrow, several
rows per program (about ``TILE_ELEMENTS`` elements), so narrow heads do not pay one launch slot per token.

Under Triton's interpreter (the CPU) each program costs milliseconds whatever its size, so tiles hold up to
``INTERPRETER_MAX_ROWS`` rows instead: every row's result is the same whatever tile it sits in (a row's reduction
runs over its own columns, ``block_d`` unchanged). The same switch, ``interpreter_tiles``, enlarges the tiles of the
GEMMs (``_gemm_tiles``), the head's final layer, attention's key tiles and the fp8 activation quantizer. The
kernels' own tests force the GPU's rules (``gpu_tile_shapes`` in ``tests/conftest.py``), so CI still runs launches
of many programs and partial tiles.
"""

from __future__ import annotations

import triton

from bitdance_rt.platform import triton_interpreter_on

TILE_ELEMENTS = 4096
MAX_ROWS_PER_TILE = 16
INTERPRETER_TILE_ELEMENTS = 1 << 16
INTERPRETER_MAX_ROWS = 256
interpreter_tiles = triton_interpreter_on  # replaced by the kernels' tests


def row_tile(width: int, max_columns: int) -> tuple[int, int]:
    """``(block_m, block_d)`` for rows of ``width`` channels: ``block_d`` a power of two of at most
    ``max_columns``, ``block_m`` rows filling about ``TILE_ELEMENTS`` (a power of two, at least 1)."""
    block_d = min(max_columns, triton.next_power_of_2(width))
    tile, most = ((INTERPRETER_TILE_ELEMENTS, INTERPRETER_MAX_ROWS) if interpreter_tiles()
                  else (TILE_ELEMENTS, MAX_ROWS_PER_TILE))
    return max(1, min(most, tile // block_d)), block_d
