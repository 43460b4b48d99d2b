"""W8A8 fp8 GEMM: ``y[M, N] = (A[M, K] · a_scales) @ (W[N, K] · w_scales)ᵀ (+ bias[N])`` with both operands e4m3,
for GPUs with FP8 tensor cores (compute capability >= 8.9; tested through Triton's interpreter on the CPU).

Shapes and dtypes: ``A [M, K]`` float8_e4m3fn (rows may be strided; ``fp8_activation_quant``'s codes) with float32
``a_scales`` per token ``[M]`` or per 1×128 group ``[M, ceil(K/128)]``; ``W [N, K]`` float8_e4m3fn, contiguous
(``QuantizedWeight.data``) with float32 ``w_scales`` per output channel ``[N]`` or per 128×128 block
``[ceil(N/128), ceil(K/128)]``; ``bias [N]`` any float dtype or None; ``y [M, N]`` float32, bfloat16 or float16
(``out_dtype``, or a given ``out`` whose rows may be strided).

Arithmetic: ``BLOCK_K`` = 128, one scale group per K step. Every step's ``tl.dot(A_tile, W_tileᵀ)`` (e4m3 products,
float32 result) is added to a float32 accumulator, so the tensor cores' reduced-precision fp8 accumulation (Hopper)
never spans more than 128 products. Per-group and per-block scales multiply each step's partial sum (by row and by
column); per-token and per-channel scales multiply the accumulator once after the loop. Then the epilogue
(``_gemm_epilogue``: bias, SwiGLU with a second accumulator over the up rows, or the gated residual), then one
rounding to the output dtype. Tiles, split-K and the shared checks by ``_gemm_launch`` (each K range scales its
partial sums; ``_split_k`` adds them in a fixed order and runs the epilogue). No atomics: the same bits every run.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bitdance_rt.ops.argument_checks import check_rows, check_tensor
from bitdance_rt.kernels._gemm_epilogue import gemm_store
from bitdance_rt.kernels._gemm_launch import prepare_gemm
from bitdance_rt.quantization.formats import BLOCK, FP8_DTYPE
from bitdance_rt.quantization.reference_linear import fp8_gemm_reference

REFERENCE = fp8_gemm_reference
KERNEL = "fp8_gemm"
BIAS_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _fp8_gemm_kernel(a_ptr, a_scale_ptr, w_ptr, w_scale_ptr, a_row_stride, scale_cols, partial_ptr, bias_ptr, out_ptr,
                     gate_ptr, M, N, K, out_row_stride, gate_row_stride, k_per_split, partial_width, split_stride,
                     A_GROUPED: tl.constexpr, W_BLOCKED: tl.constexpr, HAS_BIAS: tl.constexpr,
                     EPILOGUE: tl.constexpr, SPLIT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    up_cols = cols + N  # SwiGLU: the up rows [N, 2N) of the weight
    k_start = tl.program_id(2) * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    row_ok, col_ok = rows < M, cols < N
    a_rows = a_ptr + rows.to(tl.int64)[:, None] * a_row_stride
    w_rows = w_ptr + cols.to(tl.int64)[:, None] * K
    w_up_rows = w_ptr + up_cols.to(tl.int64)[:, None] * K
    a_scale_rows = a_scale_ptr + rows * scale_cols          # per-group activation scales [M, ceil(K/128)]
    w_scale_rows = w_scale_ptr + (cols // BLOCK_K) * scale_cols  # per-block weight scales [ceil(N/128), ceil(K/128)]
    w_up_scale_rows = w_scale_ptr + (up_cols // BLOCK_K) * scale_cols
    ks = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        k = k0 + ks
        k_ok = (k < k_end)[None, :]
        a = tl.load(a_rows + k[None, :], mask=row_ok[:, None] & k_ok, other=0.0)
        w = tl.load(w_rows + k[None, :], mask=col_ok[:, None] & k_ok, other=0.0)
        part = tl.dot(a, tl.trans(w))
        if A_GROUPED:
            a_scale = tl.load(a_scale_rows + k0 // BLOCK_K, mask=row_ok, other=0.0)[:, None]
            part = part * a_scale
        if W_BLOCKED:
            part = part * tl.load(w_scale_rows + k0 // BLOCK_K, mask=col_ok, other=0.0)[None, :]
        acc += part
        if EPILOGUE == 1:
            w_up = tl.load(w_up_rows + k[None, :], mask=col_ok[:, None] & k_ok, other=0.0)
            part_up = tl.dot(a, tl.trans(w_up))
            if A_GROUPED:
                part_up = part_up * a_scale
            if W_BLOCKED:
                part_up = part_up * tl.load(w_up_scale_rows + k0 // BLOCK_K, mask=col_ok, other=0.0)[None, :]
            acc_up += part_up
    if not A_GROUPED:
        a_scale = tl.load(a_scale_ptr + rows, mask=row_ok, other=0.0)[:, None]
        acc = acc * a_scale
        acc_up = acc_up * a_scale
    if not W_BLOCKED:
        acc = acc * tl.load(w_scale_ptr + cols, mask=col_ok, other=0.0)[None, :]
        if EPILOGUE == 1:
            acc_up = acc_up * tl.load(w_scale_ptr + up_cols, mask=col_ok, other=0.0)[None, :]
    gemm_store(acc, acc_up, rows, cols, M, N, partial_ptr, partial_width, split_stride, bias_ptr, out_ptr,
               out_row_stride, gate_ptr, gate_row_stride, HAS_BIAS, EPILOGUE, SPLIT)


def fp8_gemm(a: torch.Tensor, a_scales: torch.Tensor, weight: torch.Tensor, w_scales: torch.Tensor,
             bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.bfloat16, out: torch.Tensor | None = None,
             split_k: int | None = None, *, epilogue: str = "bias", gate: torch.Tensor | None = None) -> torch.Tensor:
    """``(a · a_scales) @ (weight · w_scales)ᵀ + bias`` -> ``[M, N]`` in ``out_dtype`` (or into ``out``), then the
    epilogue (``_gemm_epilogue``: ``"swiglu"``: weight ``[2H, K]`` -> ``[M, H]``; ``"gated_residual"``:
    ``out = x_res + gate·(...)`` in place into ``out``). Scale granularity is read from the shapes: ``a_scales``
    ``[M]`` or ``[M, ceil(K/128)]``, ``w_scales`` ``[N]`` or ``[ceil(N/128), ceil(K/128)]``. ``split_k`` forces the
    number of K ranges (None: the tile rule's choice)."""
    check_tensor(KERNEL, "a", a, shape=(None, None), dtype=FP8_DTYPE, contiguous=False)
    m, k = a.shape
    device = a.device
    check_rows(KERNEL, "a", a, (m, k), FP8_DTYPE, device)
    check_tensor(KERNEL, "weight", weight, shape=(None, k), dtype=FP8_DTYPE, device=device)
    n = weight.shape[0]
    groups = triton.cdiv(k, BLOCK)
    check_tensor(KERNEL, "a_scales", a_scales, dtype=torch.float32, device=device)
    if tuple(a_scales.shape) not in ((m,), (m, groups)):
        raise ValueError(f"{KERNEL}: a_scales has shape {list(a_scales.shape)}, expected [{m}] (per token) or "
                         f"[{m}, {groups}] (per 1x{BLOCK} group)")
    check_tensor(KERNEL, "w_scales", w_scales, dtype=torch.float32, device=device)
    if tuple(w_scales.shape) not in ((n,), (triton.cdiv(n, BLOCK), groups)):
        raise ValueError(f"{KERNEL}: w_scales has shape {list(w_scales.shape)}, expected [{n}] (per output channel) "
                         f"or [{triton.cdiv(n, BLOCK)}, {groups}] (per {BLOCK}x{BLOCK} block)")
    call = prepare_gemm(KERNEL, m=m, n_weight=n, k=k, device=device, bias=bias, bias_dtypes=BIAS_DTYPES, out=out,
                        out_dtype=out_dtype, epilogue=epilogue, gate=gate, split_k=split_k, block_k=BLOCK,
                        x_bytes=1, w_bytes=1)
    if call.launch:
        _fp8_gemm_kernel[call.grid](a, a_scales, weight, w_scales, a.stride(0), groups, *call.args,
                                    A_GROUPED=a_scales.ndim == 2, W_BLOCKED=w_scales.ndim == 2, **call.meta)
    return call.finish()
