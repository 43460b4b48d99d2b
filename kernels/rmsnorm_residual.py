"""RMSNorm with the residual add fused in: ``new_residual = x + residual`` (rounded to the sum's dtype, as torch
adds), then ``y = RMSNorm(new_residual)``, one read and one write of each row.

Styles: ``"hf"`` (Qwen3, transformers' rule): normalise in float32, cast to the dtype, times the weight (a second
rounding); ``"torch"`` (class-conditional, ``torch.nn.RMSNorm`` as torch 2.13 computes it): normalise and
multiply by the weight in float32, one cast at the end. In float32 the two are the same.

Inputs: x and residual ``[N, H]`` contiguous, float32, bfloat16 or float16 (residual may be None: the new residual
is then x itself). Their sum has torch's promoted dtype S (x's dtype when both agree; float32 for a bf16 sublayer
output added to a float32 residual stream, as the released class-conditional model runs under autocast); weight
``[H]`` in S, H up to 16,384 (not necessarily a power of two). Outputs: the new residual ``[N, H]`` in S and
y ``[N, H]`` in S or in the dtype of a given ``out`` (y is computed in S and cast once on the store, e.g. to the
bf16 input of the next matrix product). ``residual_out`` may be ``residual`` itself for an in-place update; with
``residual=None`` it receives a copy of x. One program normalises ``BLOCK_N`` whole rows held in registers.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bitdance_rt.ops.argument_checks import check_tensor
from bitdance_rt.reference.pre_attention import RMSNORM_STYLES, rmsnorm_residual_reference

REFERENCE = rmsnorm_residual_reference

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_HIDDEN = 16384  # a whole row lives in registers (at 16,384 columns a few already spill)
TILE_ELEMENTS = 4096  # rows x columns of one program, at least one whole row


@triton.jit
def _rmsnorm_residual_kernel(x_ptr, residual_ptr, weight_ptr, y_ptr, residual_out_ptr, num_rows, hidden, eps,
                             HAS_RESIDUAL: tl.constexpr, WRITE_RESIDUAL: tl.constexpr, HF_STYLE: tl.constexpr,
                             BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr):
    SUM_DTYPE: tl.constexpr = residual_out_ptr.dtype.element_ty
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_H)
    col_ok = cols < hidden
    mask = (rows < num_rows)[:, None] & col_ok[None, :]
    offsets = rows[:, None] * hidden + cols[None, :]

    summed = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        residual = tl.load(residual_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        summed = (summed + residual).to(SUM_DTYPE).to(tl.float32)
    if WRITE_RESIDUAL:
        tl.store(residual_out_ptr + offsets, summed.to(SUM_DTYPE), mask=mask)

    inv_rms = tl.rsqrt(tl.sum(summed * summed, axis=1) / hidden + eps)[:, None]
    weight = tl.load(weight_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    normalised = summed * inv_rms
    if HF_STYLE:
        normalised = normalised.to(SUM_DTYPE).to(tl.float32)
    tl.store(y_ptr + offsets, (normalised * weight).to(SUM_DTYPE).to(y_ptr.dtype.element_ty), mask=mask)


def rmsnorm_residual(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float, *,
                     style: str, out: torch.Tensor | None = None,
                     residual_out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(RMSNorm(x + residual), x + residual)`` over rows of ``[N, H]``; ``style`` is ``"hf"`` or ``"torch"``.

    ``new_residual`` is x itself when ``residual`` and ``residual_out`` are both None (nothing is written)."""
    kernel = "rmsnorm_residual"
    if style not in RMSNORM_STYLES:
        raise ValueError(f"{kernel}: style must be one of {RMSNORM_STYLES}, found {style!r}")
    check_tensor(kernel, "x", x, shape=(None, None), dtype=FLOAT_DTYPES)
    num_rows, hidden = x.shape
    device = x.device
    if not 0 < hidden <= MAX_HIDDEN:
        raise ValueError(f"{kernel}: x has {hidden} columns, expected 1 to {MAX_HIDDEN} (one row per program)")
    if residual is not None:
        check_tensor(kernel, "residual", residual, shape=(num_rows, hidden), dtype=FLOAT_DTYPES, device=device)
    sum_dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    check_tensor(kernel, "weight", weight, shape=(hidden,), dtype=sum_dtype, device=device)
    if not eps > 0:
        raise ValueError(f"{kernel}: eps must be a positive number, found {eps!r}")
    if out is None:
        out = torch.empty(num_rows, hidden, dtype=sum_dtype, device=device)
    else:
        check_tensor(kernel, "out", out, shape=(num_rows, hidden), dtype=FLOAT_DTYPES, device=device)
    if residual_out is not None:
        check_tensor(kernel, "residual_out", residual_out, shape=(num_rows, hidden), dtype=sum_dtype,
                     device=device)
        new_residual = residual_out
    elif residual is None:
        new_residual = x
    else:
        new_residual = torch.empty(num_rows, hidden, dtype=sum_dtype, device=device)
    if num_rows == 0:
        return out, new_residual

    block_h = triton.next_power_of_2(hidden)
    block_n = min(max(1, TILE_ELEMENTS // block_h), triton.next_power_of_2(num_rows))
    num_warps = min(16, max(4, block_n * block_h // 512))  # 8 to 32 elements per thread
    write_residual = new_residual is not x
    _rmsnorm_residual_kernel[(triton.cdiv(num_rows, block_n),)](
        x, x if residual is None else residual, weight, out, new_residual, num_rows, hidden, float(eps),
        HAS_RESIDUAL=residual is not None, WRITE_RESIDUAL=write_residual, HF_STYLE=style == "hf",
        BLOCK_N=block_n, BLOCK_H=block_h, num_warps=num_warps)
    return out, new_residual
