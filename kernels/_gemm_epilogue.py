"""The epilogue every GEMM of ours ends with (``float_gemm``, ``int8_weight_gemm``, ``fp8_gemm``), one
``@triton.jit`` function run either in the GEMM's own store (no split-K) or in ``_split_k``'s reduce kernel.

On a float32 ``[BLOCK_M, BLOCK_N]`` tile ``acc`` (the scaled dot products of output rows ``rows`` and columns
``cols`` of ``out [M, N]``):

- ``"bias"`` (code 0): ``out = acc + bias[N]`` (bias optional);
- ``"swiglu"`` (code 1): the weight is ``[2N, K]``, gate rows then up rows (the model's fused ``w1`` / gate_up);
  ``acc`` holds the gate rows' sums, ``acc_up`` the up rows' (same columns + N): ``out = silu(acc + bias[:N]) ·
  (acc_up + bias[N:])`` (bias ``[2N]`` optional);
- ``"gated_residual"`` (code 2): ``out`` is the residual stream x, updated in place: ``x = x + gate · (acc + bias)``
  with ``gate [M, N]`` (rows may be strided: a column chunk of the adaLN output).

Arithmetic in float32, one rounding at the store. Masked lanes read 0 and are not stored.
"""

from __future__ import annotations

import triton
import triton.language as tl

EPILOGUES = {"bias": 0, "swiglu": 1, "gated_residual": 2}


@triton.jit
def gemm_epilogue(acc, acc_up, rows, cols, M, N, bias_ptr, out_ptr, out_row_stride, gate_ptr, gate_row_stride,
                  HAS_BIAS: tl.constexpr, EPILOGUE: tl.constexpr):
    """Bias, then SwiGLU or the gated residual, then the store of ``out[rows, cols]`` (see the module text)."""
    row_ok = rows < M
    col_ok = cols < N
    inside = row_ok[:, None] & col_ok[None, :]
    rows64 = rows.to(tl.int64)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        if EPILOGUE == 1:
            acc_up += tl.load(bias_ptr + N + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if EPILOGUE == 1:
        acc = acc / (1.0 + tl.exp(-acc)) * acc_up
    out_ptrs = out_ptr + rows64[:, None] * out_row_stride + cols[None, :]
    if EPILOGUE == 2:
        gate = tl.load(gate_ptr + rows64[:, None] * gate_row_stride + cols[None, :], mask=inside, other=0.0)
        residual = tl.load(out_ptrs, mask=inside, other=0.0)
        acc = residual.to(tl.float32) + gate.to(tl.float32) * acc
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=inside)


@triton.jit
def gemm_store(acc, acc_up, rows, cols, M, N, partial_ptr, partial_width, split_stride, bias_ptr, out_ptr,
               out_row_stride, gate_ptr, gate_row_stride, HAS_BIAS: tl.constexpr, EPILOGUE: tl.constexpr,
               SPLIT: tl.constexpr):
    """The end of a GEMM program: with split-K, this K range's float32 partial sums into ``partials [S, M, W]``
    (W = 2N for SwiGLU: gate sums in columns [0, N), up sums in [N, 2N); else W = N), reduced later by
    ``_split_k``; without, the epilogue."""
    if SPLIT:
        inside = (rows < M)[:, None] & (cols < N)[None, :]
        ptrs = (partial_ptr + tl.program_id(2).to(tl.int64) * split_stride
                + rows.to(tl.int64)[:, None] * partial_width + cols[None, :])
        tl.store(ptrs, acc, mask=inside)
        if EPILOGUE == 1:
            tl.store(ptrs + N, acc_up, mask=inside)
    else:
        gemm_epilogue(acc, acc_up, rows, cols, M, N, bias_ptr, out_ptr, out_row_stride, gate_ptr, gate_row_stride,
                      HAS_BIAS, EPILOGUE)
