"""The split-K reduce of our GEMMs: ``out = epilogue(Σ_s partials[s])`` (``_gemm_epilogue``: bias, SwiGLU or the
gated residual).

Shapes: ``partials [S, M, W]`` float32 (each K range's scaled partial sums, written by ``gemm_store``; W = 2N for
SwiGLU, the gate sums then the up sums, else W = N), ``out [M, N]`` (float32, bfloat16 or float16; rows may be
strided; for the gated residual it is the residual stream, read and written). The S partials are added in index
order in float32 and rounded once on the store, so the result is the same every run (no atomics). One program per
``[BLOCK_M, BLOCK_N]`` tile.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bitdance_rt.kernels._gemm_epilogue import EPILOGUES, gemm_epilogue

BLOCK_M, BLOCK_N = 16, 128


@triton.jit
def _split_k_reduce_kernel(partial_ptr, bias_ptr, out_ptr, gate_ptr, M, N, partial_width, split_stride,
                           out_row_stride, gate_row_stride, SPLITS: tl.constexpr, HAS_BIAS: tl.constexpr,
                           EPILOGUE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    inside = (rows < M)[:, None] & (cols < N)[None, :]
    ptrs = partial_ptr + rows.to(tl.int64)[:, None] * partial_width + cols[None, :]
    total = tl.load(ptrs, mask=inside, other=0.0)
    total_up = total
    if EPILOGUE == 1:
        total_up = tl.load(ptrs + N, mask=inside, other=0.0)
    for s in tl.static_range(1, SPLITS):
        ptrs += split_stride  # one split's [M, W] at a time: no 32-bit product s·M·W
        total += tl.load(ptrs, mask=inside, other=0.0)
        if EPILOGUE == 1:
            total_up += tl.load(ptrs + N, mask=inside, other=0.0)
    gemm_epilogue(total, total_up, rows, cols, M, N, bias_ptr, out_ptr, out_row_stride, gate_ptr, gate_row_stride,
                  HAS_BIAS, EPILOGUE)


def split_k_reduce(partials: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor, *,
                   epilogue: str = "bias", gate: torch.Tensor | None = None) -> torch.Tensor:
    """Sum ``partials [S, M, W]`` over S (in order), apply the epilogue, store into ``out [M, N]`` (arguments checked
    by the GEMM launchers that call this, ``_gemm_launch``)."""
    splits, m, width = partials.shape
    n = out.shape[1]
    code = EPILOGUES[epilogue]
    _split_k_reduce_kernel[(triton.cdiv(m, BLOCK_M), triton.cdiv(n, BLOCK_N))](
        partials, partials if bias is None else bias, out, out if gate is None else gate, m, n, width, m * width,
        out.stride(0), 0 if gate is None else gate.stride(0), SPLITS=splits, HAS_BIAS=bias is not None,
        EPILOGUE=code, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, num_warps=4)
    return out
