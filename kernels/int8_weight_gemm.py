"""Weight-only int8 GEMM: ``y[M, N] = x[M, K] @ (Wq[N, K] · scales[N])ᵀ (+ bias[N])``, for GPUs without FP8
(A100, RTX 3090) and any other.

Shapes and dtypes: ``x [M, K]`` float32, bfloat16 or float16 (rows may be strided, channels contiguous); ``Wq [N, K]``
int8, contiguous (``QuantizedWeight.data``, codes -127..127); ``scales [N]`` float32 (one per output channel);
``bias [N]`` any float dtype or None; ``y [M, N]`` in x's dtype (or a given ``out`` of float32/bfloat16/float16, rows
may be strided).

In registers: each ``[BLOCK_N, BLOCK_K]`` int8 weight tile is loaded (one byte per weight, half of bf16's traffic),
converted to x's dtype (exact: |code| <= 127 fits bf16's 8 significant bits), and fed to a tensor-core dot with
float32 accumulation (float32 x: IEEE float32 products, no TF32). The per-channel scale factors out of the K sum and
is applied once per output in float32 after the loop, then the epilogue (``_gemm_epilogue``: bias, SwiGLU with a
second accumulator over the up rows, or the gated residual), then one rounding to the output dtype. Tiles, split-K
and the shared checks by ``_gemm_launch`` (split ranges each scale their partial sums; ``_split_k`` adds them in a
fixed order and runs the epilogue). No atomics: the same bits every run.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bitdance_rt.ops.argument_checks import check_rows, check_tensor
from bitdance_rt.kernels._gemm_epilogue import gemm_store
from bitdance_rt.kernels._gemm_launch import prepare_gemm
from bitdance_rt.quantization.reference_linear import int8_weight_gemm_reference

REFERENCE = int8_weight_gemm_reference
KERNEL = "int8_weight_gemm"
X_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _int8_weight_gemm_kernel(x_ptr, w_ptr, scale_ptr, x_row_stride, partial_ptr, bias_ptr, out_ptr, gate_ptr, M, N, K,
                             out_row_stride, gate_row_stride, k_per_split, partial_width, split_stride,
                             HAS_BIAS: tl.constexpr, EPILOGUE: tl.constexpr, SPLIT: tl.constexpr,
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
        w = tl.load(w_rows + k[None, :], mask=col_ok[:, None] & k_ok, other=0)
        acc = tl.dot(x, tl.trans(w.to(x_ptr.dtype.element_ty)), acc, input_precision=DOT_PRECISION)
        if EPILOGUE == 1:
            w_up = tl.load(w_up_rows + k[None, :], mask=col_ok[:, None] & k_ok, other=0)
            acc_up = tl.dot(x, tl.trans(w_up.to(x_ptr.dtype.element_ty)), acc_up, input_precision=DOT_PRECISION)
    acc = acc * tl.load(scale_ptr + cols, mask=col_ok, other=0.0)[None, :]
    if EPILOGUE == 1:
        acc_up = acc_up * tl.load(scale_ptr + N + cols, mask=col_ok, other=0.0)[None, :]
    gemm_store(acc, acc_up, rows, cols, M, N, partial_ptr, partial_width, split_stride, bias_ptr, out_ptr,
               out_row_stride, gate_ptr, gate_row_stride, HAS_BIAS, EPILOGUE, SPLIT)


def int8_weight_gemm(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None,
                     out: torch.Tensor | None = None, split_k: int | None = None, *, epilogue: str = "bias",
                     gate: torch.Tensor | None = None) -> torch.Tensor:
    """``x [M, K] @ (weight [N, K] int8 · scales [N])ᵀ + bias`` -> ``[M, N]`` in x's dtype (or into ``out``), then
    the epilogue (``_gemm_epilogue``: ``"swiglu"``: weight ``[2H, K]`` -> ``[M, H]``; ``"gated_residual"``:
    ``out = x_res + gate·(...)`` in place into ``out``). ``split_k`` forces the number of K ranges (None: the tile
    rule's choice)."""
    check_tensor(KERNEL, "x", x, shape=(None, None), dtype=X_DTYPES, contiguous=False)
    m, k = x.shape
    device = x.device
    check_rows(KERNEL, "x", x, (m, k), x.dtype, device)
    check_tensor(KERNEL, "weight", weight, shape=(None, k), dtype=torch.int8, device=device)
    n = weight.shape[0]
    check_tensor(KERNEL, "scales", scales, shape=(n,), dtype=torch.float32, device=device)
    wide = x.dtype == torch.float32  # IEEE float32 dot on the FMA units: smaller tiles
    call = prepare_gemm(KERNEL, m=m, n_weight=n, k=k, device=device, bias=bias, bias_dtypes=X_DTYPES, out=out,
                        out_dtype=x.dtype, epilogue=epilogue, gate=gate, split_k=split_k,
                        block_k=32 if wide else 128, x_bytes=x.element_size(), w_bytes=1,
                        max_block=64 if wide else 128)
    if call.launch:
        _int8_weight_gemm_kernel[call.grid](x, weight, scales, x.stride(0), *call.args,
                                            DOT_PRECISION="ieee" if wide else None, **call.meta)
    return call.finish()
