"""The head's per-sampling-step condition in one elementwise pass: ``out = silu(cond + time)``.

Shapes: ``cond, out [N, D]`` (N token rows, both halves of a guided batch; D the head width), ``time [D]`` (the
time embedding of the sampling step, one row of the step-times table, broadcast over the rows). ``cond`` and
``out`` may be row-strided; channels contiguous. Dtypes: float32, bfloat16 or float16, all alike; arithmetic in
float32, one rounding at the store. Replaces an add and a SiLU (two launches and an ``[N, D]`` round trip).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bitdance_rt.ops.argument_checks import check_rows, check_tensor
from bitdance_rt.kernels._tiles import row_tile
from bitdance_rt.reference.head_ops import time_condition_ref

REFERENCE = time_condition_ref
KERNEL = "time_condition"
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_BLOCK = 1024


@triton.jit
def _time_condition_kernel(cond_ptr, time_ptr, out_ptr, cond_row_stride, out_row_stride, rows, width,
                           BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    row = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)[:, None]
    cols = (tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D))[None, :]
    inside = (row < rows) & (cols < width)
    c = tl.load(cond_ptr + row * cond_row_stride + cols, mask=inside, other=0.0).to(tl.float32)
    t = tl.load(time_ptr + cols, mask=cols < width, other=0.0).to(tl.float32)
    v = c + t
    tl.store(out_ptr + row * out_row_stride + cols, (v / (1.0 + tl.exp(-v))).to(out_ptr.dtype.element_ty),
             mask=inside)


def time_condition(cond: torch.Tensor, time: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``silu(cond + time)`` for ``cond [N, D]`` and ``time [D]``."""
    check_tensor(KERNEL, "cond", cond, shape=(None, None), dtype=FLOAT_DTYPES, contiguous=False)
    rows, width = cond.shape
    check_rows(KERNEL, "cond", cond, (rows, width), cond.dtype, cond.device)
    check_tensor(KERNEL, "time", time, shape=(width,), dtype=cond.dtype, device=cond.device)
    if out is None:
        out = torch.empty((rows, width), dtype=cond.dtype, device=cond.device)
    else:
        check_rows(KERNEL, "out", out, (rows, width), cond.dtype, cond.device)
    if rows == 0 or width == 0:
        return out
    block_m, block_d = row_tile(width, MAX_BLOCK)
    grid = (triton.cdiv(rows, block_m), triton.cdiv(width, block_d))
    _time_condition_kernel[grid](cond, time, out, cond.stride(0), out.stride(0), rows, width,
                                 BLOCK_M=block_m, BLOCK_D=block_d, num_warps=4)
    return out
