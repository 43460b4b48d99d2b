"""The ``fp8_gemm`` operation through ``torch._scaled_mm`` (cuBLASLt / CUTLASS on FP8 GPUs): row-wise scales only.

``fp8_gemm_scaled_mm(codes, scales, qw, bias, out_dtype)`` computes what ``kernels.fp8_gemm`` and
``reference_linear.fp8_gemm_reference`` compute, for per-token activation scales and per-output-channel fp8 weights:
``y = (codes · scales[:, None]) @ (qw.data · qw.scales[:, None])ᵀ + bias``.

Rules ``torch._scaled_mm`` sets (checked here, so a violation names the argument instead of failing inside torch):
- operands e4m3 (``torch.float8_e4m3fn``); the first ``[M, K]`` row-major (contiguous), the second ``[K, N]``
  column-major: ``qw.data.t()`` of the contiguous ``[N, K]`` weight is exactly that, no copy;
- K and N multiples of 16;
- row-wise scaling: float32 ``scale_a [M, 1]`` and ``scale_b [1, N]``, both contiguous (views of ``[M]`` and
  ``[N]``); per-1×128-group or per-128×128-block scales are not taken here: use ``kernels.fp8_gemm``;
- bias: passed to torch only when it is bf16 and the output is bf16 (the combination every torch version takes);
  otherwise added afterwards in float32;
- ``use_fast_accum=False`` (the tensor cores' fp8 accumulation promoted to float32; as ``kernels.fp8_gemm``).
On CUDA, row-wise scaling needs compute capability >= 8.9 (9.0 in some torch versions); torch's own error is
re-raised as ``UnsupportedDeviceError`` naming the Triton kernel as the alternative. The CPU build of torch 2.13
runs row-wise ``_scaled_mm`` too (tests/quantization use it there).
"""

from __future__ import annotations

import torch

from ..errors import InvalidRequestError, UnsupportedDeviceError
from .formats import FP8_DTYPE
from .quantized_weight import QuantizedWeight

OP = "fp8_gemm_scaled_mm"
ALIGNMENT = 16
OUT_DTYPES = (torch.bfloat16, torch.float32, torch.float16)


def check_scaled_mm_args(codes: torch.Tensor, scales: torch.Tensor, qw: QuantizedWeight,
                         out_dtype: torch.dtype) -> None:
    if codes.dtype != FP8_DTYPE or codes.ndim != 2 or not codes.is_contiguous():
        raise InvalidRequestError(f"{OP}: activations must be contiguous 2-D float8_e4m3fn [M, K], found "
                                  f"{codes.dtype} {list(codes.shape)} (contiguous={codes.is_contiguous()})")
    m, k = codes.shape
    if qw.fmt != "fp8" or qw.block is not None:
        raise InvalidRequestError(f"{OP}: takes fp8 weights with one scale per output channel, found {qw.fmt} with "
                                  f"block={qw.block}; block-scaled weights go through kernels.fp8_gemm")
    if not qw.data.is_contiguous():
        raise InvalidRequestError(f"{OP}: the weight codes must be a contiguous [N, K] tensor (its transpose is the "
                                  "column-major operand torch._scaled_mm needs)")
    n = qw.out_features
    if qw.in_features != k:
        raise InvalidRequestError(f"{OP}: activations have K = {k}, the weight takes {qw.in_features}")
    if k % ALIGNMENT or n % ALIGNMENT:
        raise InvalidRequestError(f"{OP}: torch._scaled_mm needs K and N to be multiples of {ALIGNMENT}, found "
                                  f"K = {k}, N = {n}; use kernels.fp8_gemm")
    if scales.dtype != torch.float32 or tuple(scales.shape) != (m,):
        raise InvalidRequestError(f"{OP}: takes per-token float32 activation scales [{m}], found {scales.dtype} "
                                  f"{list(scales.shape)}; per-group scales go through kernels.fp8_gemm")
    if out_dtype not in OUT_DTYPES:
        raise InvalidRequestError(f"{OP}: out_dtype must be one of {OUT_DTYPES}, found {out_dtype}")


def fp8_gemm_scaled_mm(codes: torch.Tensor, scales: torch.Tensor, qw: QuantizedWeight,
                       bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """``[M, K]`` e4m3 codes with per-token scales ``[M]`` times the per-channel fp8 weight -> ``[M, N]``."""
    check_scaled_mm_args(codes, scales, qw, out_dtype)
    fused_bias = bias is not None and bias.dtype == torch.bfloat16 and out_dtype == torch.bfloat16
    try:
        y = torch._scaled_mm(codes, qw.data.t(), scale_a=scales.contiguous().view(-1, 1),
                             scale_b=qw.scales.contiguous().view(1, -1), bias=bias if fused_bias else None,
                             out_dtype=out_dtype, use_fast_accum=False)
    except RuntimeError as e:
        where = codes.device
        capability = ""
        if where.type == "cuda":
            major, minor = torch.cuda.get_device_capability(where)
            capability = f" (compute capability {major}.{minor})"
        raise UnsupportedDeviceError(f"{OP}: torch {torch.__version__} refused row-wise scaled fp8 matmul on "
                                     f"{where}{capability}: {e}. Use kernels.fp8_gemm (Triton) instead.") from e
    if bias is not None and not fused_bias:
        y = (y.float() + bias.float()).to(out_dtype)
    return y
