"""The adaLN-gated residual in one elementwise pass: ``out = x + h·gate``.

Shapes: ``x, h, gate, out [N, D]`` (N tokens, D channels). Every operand may be a row-strided view (``gate`` is
typically a chunk of one adaLN output ``[N, 6D]``); only the channel stride must be 1. ``out`` may be ``x`` itself
(the residual stream updated in place): each element is read before it is written by the same program. Dtypes:
float32, bfloat16 or float16, all tensors alike; arithmetic in float32, one rounding at the store.

A program handles a ``[BLOCK_M, BLOCK_D]`` tile: up to ``MAX_BLOCK`` columns and, when rows are narrow, several
rows (about ``_tiles.TILE_ELEMENTS`` elements), so narrow heads do not pay one launch slot per token.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bitdance_rt.ops.argument_checks import check_rows, check_tensor
from bitdance_rt.kernels._tiles import row_tile
from bitdance_rt.reference.head_ops import gated_residual_ref

REFERENCE = gated_residual_ref
KERNEL = "gated_residual"
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_BLOCK = 1024  # columns of one tile at most


@triton.jit
def _gated_residual_kernel(x_ptr, h_ptr, gate_ptr, out_ptr, x_row_stride, h_row_stride, gate_row_stride,
                           out_row_stride, rows, width, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    row = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)[:, None]
    cols = (tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D))[None, :]
    inside = (row < rows) & (cols < width)
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=inside, other=0.0).to(tl.float32)
    h = tl.load(h_ptr + row * h_row_stride + cols, mask=inside, other=0.0).to(tl.float32)
    gate = tl.load(gate_ptr + row * gate_row_stride + cols, mask=inside, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * out_row_stride + cols, (x + h * gate).to(out_ptr.dtype.element_ty), mask=inside)


def gated_residual(x: torch.Tensor, h: torch.Tensor, gate: torch.Tensor,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """``x + h·gate`` for ``[N, D]`` operands; pass ``out=x`` to update the residual stream in place."""
    check_tensor(KERNEL, "x", x, shape=(None, None), dtype=FLOAT_DTYPES, contiguous=False)
    rows, width = x.shape
    for name, t in (("x", x), ("h", h), ("gate", gate)):
        check_rows(KERNEL, name, t, (rows, width), x.dtype, x.device)
    if out is None:
        out = torch.empty((rows, width), dtype=x.dtype, device=x.device)
    else:
        check_rows(KERNEL, "out", out, (rows, width), x.dtype, x.device)
    if rows == 0 or width == 0:
        return out
    block_m, block_d = row_tile(width, MAX_BLOCK)
    grid = (triton.cdiv(rows, block_m), triton.cdiv(width, block_d))
    _gated_residual_kernel[grid](
        x, h, gate, out, x.stride(0), h.stride(0), gate.stride(0), out.stride(0), rows, width,
        BLOCK_M=block_m, BLOCK_D=block_d, num_warps=4)
    return out
