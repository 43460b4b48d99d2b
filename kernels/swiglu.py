"""The SwiGLU gate between the head's two MLP linears: ``out = silu(a)·b`` with ``a, b`` the halves of ``ab``.

Shapes: ``ab [N, 2H]`` (the ``w1`` output: first H channels a, last H channels b; rows may be strided, channels
contiguous) -> ``out [N, H]``. Dtypes: float32, bfloat16 or float16, alike; ``silu(a) = a / (1 + exp(−a))`` and the
product in float32, one rounding at the store.

A program handles a ``[BLOCK_M, BLOCK_D]`` tile of ``out``: up to ``MAX_BLOCK`` columns and, when rows are narrow,
several rows (about ``_tiles.TILE_ELEMENTS`` elements), so narrow heads do not pay one launch slot per token.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bitdance_rt.ops.argument_checks import check_rows, check_tensor
from bitdance_rt.kernels._tiles import row_tile
from bitdance_rt.reference.head_ops import swiglu_ref

REFERENCE = swiglu_ref
KERNEL = "swiglu"
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_BLOCK = 1024  # columns of one tile at most


@triton.jit
def _swiglu_kernel(ab_ptr, out_ptr, ab_row_stride, out_row_stride, rows, hidden, BLOCK_M: tl.constexpr,
                   BLOCK_D: tl.constexpr):
    row = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)[:, None]
    cols = (tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D))[None, :]
    inside = (row < rows) & (cols < hidden)
    a = tl.load(ab_ptr + row * ab_row_stride + cols, mask=inside, other=0.0).to(tl.float32)
    b = tl.load(ab_ptr + row * ab_row_stride + hidden + cols, mask=inside, other=0.0).to(tl.float32)
    out = a / (1.0 + tl.exp(-a)) * b
    tl.store(out_ptr + row * out_row_stride + cols, out.to(out_ptr.dtype.element_ty), mask=inside)


def swiglu(ab: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``silu(ab[:, :H])·ab[:, H:]`` for ``ab [N, 2H]`` -> ``[N, H]``."""
    check_tensor(KERNEL, "ab", ab, shape=(None, None), dtype=FLOAT_DTYPES, contiguous=False)
    rows, both = ab.shape
    if both % 2:
        raise ValueError(f"{KERNEL}: ab has {both} channels, expected an even number (the a and b halves)")
    hidden = both // 2
    check_rows(KERNEL, "ab", ab, (rows, both), ab.dtype, ab.device)
    if out is None:
        out = torch.empty((rows, hidden), dtype=ab.dtype, device=ab.device)
    else:
        check_rows(KERNEL, "out", out, (rows, hidden), ab.dtype, ab.device)
    if rows == 0 or hidden == 0:
        return out
    block_m, block_d = row_tile(hidden, MAX_BLOCK)
    _swiglu_kernel[(triton.cdiv(rows, block_m), triton.cdiv(hidden, block_d))](
        ab, out, ab.stride(0), out.stride(0), rows, hidden, BLOCK_M=block_m, BLOCK_D=block_d, num_warps=4)
    return out
