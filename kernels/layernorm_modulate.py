"""LayerNorm followed by adaLN modulation in one pass: ``out = LN(x)·(1+scale)+shift``.

Shapes: ``x, scale, shift, out [N, D]`` (N tokens, D channels), ``weight, bias [D]`` (TransBlock / ResBlock norms)
or both ``None`` (the final layer's affine-free norm). ``scale`` and ``shift`` (and ``x``, ``out``) may be row-strided
views, e.g. chunks of one adaLN output ``[N, 6D]``; only their channel stride must be 1. Dtypes: float32, bfloat16
or float16, all tensors alike; statistics and arithmetic in float32, one rounding at the store.

A program holds whole rows in registers (``BLOCK_M`` of them when rows are narrow, so narrow heads do not pay one
launch slot per token): x is read once, the two-pass mean/variance come from registers, D is limited to
``MAX_WIDTH``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bitdance_rt.ops.argument_checks import check_rows, check_tensor
from bitdance_rt.kernels._tiles import row_tile
from bitdance_rt.reference.head_ops import layernorm_modulate_ref

REFERENCE = layernorm_modulate_ref
KERNEL = "layernorm_modulate"
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_WIDTH = 16384


@triton.jit
def _layernorm_modulate_kernel(x_ptr, scale_ptr, shift_ptr, weight_ptr, bias_ptr, out_ptr,
                               x_row_stride, scale_row_stride, shift_row_stride, out_row_stride, rows, width, eps,
                               AFFINE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    row = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)[:, None]
    cols = tl.arange(0, BLOCK_D)[None, :]
    inside = (row < rows) & (cols < width)
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=inside, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1)[:, None] / width
    centred = tl.where(inside, x - mean, 0.0)
    var = tl.sum(centred * centred, axis=1)[:, None] / width
    normed = centred * tl.rsqrt(var + eps)
    if AFFINE:
        weight = tl.load(weight_ptr + cols, mask=cols < width, other=0.0).to(tl.float32)
        bias = tl.load(bias_ptr + cols, mask=cols < width, other=0.0).to(tl.float32)
        normed = normed * weight + bias
    scale = tl.load(scale_ptr + row * scale_row_stride + cols, mask=inside, other=0.0).to(tl.float32)
    shift = tl.load(shift_ptr + row * shift_row_stride + cols, mask=inside, other=0.0).to(tl.float32)
    out = normed * (1.0 + scale) + shift
    tl.store(out_ptr + row * out_row_stride + cols, out.to(out_ptr.dtype.element_ty), mask=inside)


def _num_warps(block: int) -> int:
    return 4 if block <= 1024 else 8 if block <= 4096 else 16


def layernorm_modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, weight: torch.Tensor | None,
                       bias: torch.Tensor | None, eps: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """``LayerNorm(x; weight, bias, eps)·(1+scale)+shift`` over the last dimension of ``x [N, D]``."""
    check_tensor(KERNEL, "x", x, shape=(None, None), dtype=FLOAT_DTYPES, contiguous=False)
    rows, width = x.shape
    check_rows(KERNEL, "x", x, (rows, width), x.dtype, x.device)
    if not 0 < width <= MAX_WIDTH:
        raise ValueError(f"{KERNEL}: x has {width} channels, expected 1..{MAX_WIDTH} (one row is held in registers)")
    check_rows(KERNEL, "scale", scale, (rows, width), x.dtype, x.device)
    check_rows(KERNEL, "shift", shift, (rows, width), x.dtype, x.device)
    if (weight is None) != (bias is None):
        raise ValueError(f"{KERNEL}: weight is {'None' if weight is None else 'given'} but bias is "
                         f"{'None' if bias is None else 'given'}; pass both (affine LayerNorm) or neither")
    if weight is not None:
        check_tensor(KERNEL, "weight", weight, shape=(width,), dtype=x.dtype, device=x.device)
        check_tensor(KERNEL, "bias", bias, shape=(width,), dtype=x.dtype, device=x.device)
    if not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"{KERNEL}: eps is {eps!r}, expected a positive float such as 1e-6")
    if out is None:
        out = torch.empty((rows, width), dtype=x.dtype, device=x.device)
    else:
        check_rows(KERNEL, "out", out, (rows, width), x.dtype, x.device)
    if rows == 0:
        return out
    block_m, block = row_tile(width, MAX_WIDTH)
    _layernorm_modulate_kernel[(triton.cdiv(rows, block_m),)](
        x, scale, shift, x if weight is None else weight, x if bias is None else bias, out,
        x.stride(0), scale.stride(0), shift.stride(0), out.stride(0), rows, width, float(eps),
        AFFINE=weight is not None, BLOCK_M=block_m, BLOCK_D=block, num_warps=_num_warps(block * block_m))
    return out
