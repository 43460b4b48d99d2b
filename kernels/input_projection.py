"""The head's input projection for both guidance halves in one kernel: ``out = repeat(x_half·Wᵀ + b, mult)``.

Shapes: ``x_half [B, P, C]`` float32 (the sampler's sample; C, the token channels, is small: 16-32), ``weight
[D, C]``, ``bias [D]`` or None, ``out [mult·B·P, D]`` in the weight's dtype (float32, bfloat16 or float16), rows
``[j·B·P + r]`` equal for every ``j < mult``. Each element of x is rounded to the weight's dtype before the product
(as ``input_proj(x.to(dtype))``), products are accumulated in float32, the bias added in float32, one rounding at
the store. Replaces the cast, the GEMM and the ``repeat`` of the guided half (three launches, two temporaries).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bitdance_rt.ops.argument_checks import check_tensor
from bitdance_rt.reference.head_ops import input_projection_ref

REFERENCE = input_projection_ref
KERNEL = "input_projection"
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BLOCK_M = 32        # sample rows per program
BLOCK_N = 64        # output channels per program
MAX_BLOCK_K = 64    # input channels per product step (C is looped in steps of this)
MIN_DOT = 16        # tl.dot's smallest tile side
MAX_MULT = 2


@triton.jit
def _input_projection_kernel(x_ptr, w_ptr, b_ptr, out_ptr, rows, width, channels, HAS_BIAS: tl.constexpr,
                             MULT: tl.constexpr, IEEE: tl.constexpr, BLOCK_M: tl.constexpr,
                             BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    row = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    col = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_in, col_in = row < rows, col < width
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, channels, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_in = k < channels
        x = tl.load(x_ptr + row[:, None] * channels + k[None, :], mask=row_in[:, None] & k_in[None, :], other=0.0)
        w = tl.load(w_ptr + col[None, :] * channels + k[:, None], mask=k_in[:, None] & col_in[None, :], other=0.0)
        x = x.to(w_ptr.dtype.element_ty)
        if IEEE:
            acc = tl.dot(x, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(x, w, acc)
    if HAS_BIAS:
        acc += tl.load(b_ptr + col, mask=col_in, other=0.0).to(tl.float32)[None, :]
    y = acc.to(out_ptr.dtype.element_ty)
    inside = row_in[:, None] & col_in[None, :]
    for j in tl.static_range(MULT):
        tl.store(out_ptr + (row + j * rows)[:, None] * width + col[None, :], y, mask=inside)


def input_projection(x_half: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, mult: int,
                     out: torch.Tensor | None = None) -> torch.Tensor:
    """``input_proj(x_half.to(weight.dtype))`` as ``[B·P, D]`` rows, repeated ``mult`` (1, or 2 when guided) times:
    returns ``[mult·B·P, D]`` in the weight's dtype (in ``out`` when given)."""
    check_tensor(KERNEL, "x_half", x_half, shape=(None, None, None), dtype=torch.float32)
    check_tensor(KERNEL, "weight", weight, shape=(None, x_half.shape[2]), dtype=FLOAT_DTYPES, device=x_half.device)
    width = weight.shape[0]
    if bias is not None:
        check_tensor(KERNEL, "bias", bias, shape=(width,), dtype=weight.dtype, device=x_half.device)
    if isinstance(mult, bool) or not isinstance(mult, int) or not 1 <= mult <= MAX_MULT:
        raise ValueError(f"{KERNEL}: mult is {mult!r}, expected the Python int 1 (unguided) or 2 (guided: the rows "
                         "repeated for the unconditional half)")
    rows = x_half.shape[0] * x_half.shape[1]
    if out is None:
        out = torch.empty((mult * rows, width), dtype=weight.dtype, device=x_half.device)
    else:
        check_tensor(KERNEL, "out", out, shape=(mult * rows, width), dtype=weight.dtype, device=x_half.device)
    channels = x_half.shape[2]
    if rows == 0 or width == 0:
        return out
    block_k = min(MAX_BLOCK_K, max(MIN_DOT, triton.next_power_of_2(channels)))
    _input_projection_kernel[(triton.cdiv(rows, BLOCK_M), triton.cdiv(width, BLOCK_N))](
        x_half, weight, weight if bias is None else bias, out, rows, width, channels, HAS_BIAS=bias is not None,
        MULT=mult, IEEE=weight.dtype == torch.float32, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=block_k,
        num_warps=4)
    return out
