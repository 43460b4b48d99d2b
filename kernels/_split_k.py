"""The split-K epilogue of the 8-bit-weight GEMMs: ``out[m, n] = Σ_s partials[s, m, n] + bias[n]``.

Shapes: ``partials [S, M, N]`` float32 (each K range's scaled partial sums, written by ``int8_weight_gemm`` or
``fp8_gemm``), ``bias [N]`` (any float dtype, optional), ``out [M, N]`` (float32, bfloat16 or float16; rows may be
strided). The S partials are added in index order in float32 and rounded once on the store, so the result is the
same every run (no atomics). One program per ``[BLOCK_M, BLOCK_N]`` tile.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_M, BLOCK_N = 16, 128


@triton.jit
def _split_k_reduce_kernel(partial_ptr, bias_ptr, out_ptr, M, N, split_stride, out_row_stride, SPLITS: tl.constexpr,
                           HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    inside = (rows < M)[:, None] & (cols < N)[None, :]
    offsets = rows[:, None] * N + cols[None, :]
    total = tl.load(partial_ptr + offsets, mask=inside, other=0.0)
    for s in tl.static_range(1, SPLITS):
        total += tl.load(partial_ptr + s * split_stride + offsets, mask=inside, other=0.0)
    if HAS_BIAS:
        total += tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + rows[:, None] * out_row_stride + cols[None, :], total.to(out_ptr.dtype.element_ty),
             mask=inside)


def split_k_reduce(partials: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """Sum ``partials [S, M, N]`` over S (in order), add ``bias``, store into ``out [M, N]`` (checked by the GEMM
    launchers that call this)."""
    splits, m, n = partials.shape
    _split_k_reduce_kernel[(triton.cdiv(m, BLOCK_M), triton.cdiv(n, BLOCK_N))](
        partials, partials if bias is None else bias, out, m, n, m * n, out.stride(0), SPLITS=splits,
        HAS_BIAS=bias is not None, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, num_warps=4)
    return out
