"""The main loop shared by the float-weight and the int8 weight-only GEMMs (``float_gemm``, ``int8_weight_gemm``):
one ``[BLOCK_M, BLOCK_N]`` output tile of ``x[M, K] @ W[N, K]ᵀ`` over the K range of its split, then the shared
epilogue store (``_gemm_epilogue.gemm_store``).

``W`` is in x's dtype, or int8 codes (``SCALED``) converted to x's dtype in registers (exact: |code| <= 127) with
their per-output-channel float32 scales applied once after the loop (the scale factors out of the K sum). SwiGLU
(``EPILOGUE == 1``) keeps a second accumulator over the up rows ``[N, 2N)`` of a ``[2N, K]`` weight. Float32
accumulation; ``DOT_PRECISION="ieee"`` for float32 operands (no TF32). Grid: (M tiles, N tiles, K splits).
"""

from __future__ import annotations

import triton
import triton.language as tl

from bitdance_rt.kernels._gemm_epilogue import gemm_store


@triton.jit
def weight_gemm_kernel(x_ptr, w_ptr, scale_ptr, x_row_stride, partial_ptr, bias_ptr, out_ptr, gate_ptr, M, N, K,
                       out_row_stride, gate_row_stride, k_per_split, partial_width, split_stride,
                       SCALED: tl.constexpr, HAS_BIAS: tl.constexpr, EPILOGUE: tl.constexpr, SPLIT: tl.constexpr,
                       DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    k_start = tl.program_id(2) * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    row_ok, col_ok = rows < M, cols < N
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * x_row_stride
    w_rows = w_ptr + cols.to(tl.int64)[:, None] * K
    w_up_rows = w_ptr + (cols.to(tl.int64) + N)[:, None] * K  # SwiGLU: the up rows [N, 2N)
    ks = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        k = k0 + ks
        k_ok = (k < k_end)[None, :]
        x = tl.load(x_rows + k[None, :], mask=row_ok[:, None] & k_ok, other=0.0)
        w = tl.load(w_rows + k[None, :], mask=col_ok[:, None] & k_ok, other=0).to(x_ptr.dtype.element_ty)
        acc = tl.dot(x, tl.trans(w), acc, input_precision=DOT_PRECISION)
        if EPILOGUE == 1:
            w_up = tl.load(w_up_rows + k[None, :], mask=col_ok[:, None] & k_ok, other=0).to(x_ptr.dtype.element_ty)
            acc_up = tl.dot(x, tl.trans(w_up), acc_up, input_precision=DOT_PRECISION)
    if SCALED:
        acc = acc * tl.load(scale_ptr + cols, mask=col_ok, other=0.0)[None, :]
        if EPILOGUE == 1:
            acc_up = acc_up * tl.load(scale_ptr + N + cols, mask=col_ok, other=0.0)[None, :]
    gemm_store(acc, acc_up, rows, cols, M, N, partial_ptr, partial_width, split_stride, bias_ptr, out_ptr,
               out_row_stride, gate_ptr, gate_row_stride, HAS_BIAS, EPILOGUE, SPLIT)
