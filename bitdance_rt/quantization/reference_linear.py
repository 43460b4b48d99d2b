"""The quantized linear in plain PyTorch: the oracle of the quantized kernels, and how the reference backend runs
quantized on the CPU.

Operations (one name per operation across the kernel, the reference, the tests and the benchmarks):

- ``fp8_activation_quant``: activations ``x [M, K]`` -> e4m3 codes ``[M, K]`` and float32 scales, one per token
  (``group_size=None``: ``[M]``) or one per 1×128 group (``group_size=128``: ``[M, ceil(K/128)]``). The same rule as
  the weights: ``scale = max(amax / 448, SCALE_FLOOR)``, code = ``(x / scale)`` in float32, clamped to ±448,
  rounded by ``tensor.to(torch.float8_e4m3fn)`` (nearest, ties to even). A NaN or Inf in a row makes that row's
  output NaN downstream (never a silently finite value).
- ``fp8_gemm``: ``y = (dequant(xq) @ dequant(Wq)ᵀ + bias)`` from codes and scales, computed in float32 (or float64
  when asked), cast to ``out_dtype``.
- ``int8_weight_gemm``: ``y = x @ dequant(Wq)ᵀ + bias`` with the weight dequantized to x's dtype.
- ``quantized_linear``: the layer: int8 (and fp8 with ``act_quant=None``): dequantize the weight to x's dtype, then
  ``F.linear``; fp8 W8A8: ``fp8_activation_quant`` with the fast path's rounding, then ``fp8_gemm`` in float32, cast
  back to x's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InvalidRequestError
from .formats import BLOCK, FP8_DTYPE, FP8_MAX, check_act_quant
from .quantized_weight import QuantizedWeight, _scales_from_amax, dequantize

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _check_group(group_size) -> None:
    if group_size not in (None, BLOCK):
        raise InvalidRequestError(f"fp8_activation_quant: group_size must be None (one scale per token) or {BLOCK} "
                                  f"(one per 1x{BLOCK} group), found {group_size!r}")


def fp8_activation_quant_reference(x: torch.Tensor, group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [M, K]`` (float) -> ``(codes [M, K] float8_e4m3fn, scales [M] or [M, ceil(K/128)] float32)``."""
    _check_group(group_size)
    if x.ndim != 2 or x.dtype not in FLOAT_DTYPES:
        raise InvalidRequestError(f"fp8_activation_quant: x must be a 2-D float tensor [tokens, channels], found "
                                  f"{x.dtype} {list(x.shape)}")
    wide = x.to(torch.float32)
    m, k = wide.shape
    if group_size is None:
        scales = _scales_from_amax(wide.abs().amax(dim=1) if k else wide.new_zeros(m), FP8_MAX)
        per_element = scales[:, None]
    else:
        padded = F.pad(wide.abs(), (0, (-k) % group_size))
        scales = _scales_from_amax(padded.view(m, -1, group_size).amax(dim=2), FP8_MAX)
        per_element = scales.repeat_interleave(group_size, dim=1)[:, :k]
    codes = (wide / per_element).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return codes, scales


def dequantize_activations(codes: torch.Tensor, scales: torch.Tensor,
                           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Codes ``[M, K]`` times their per-token ``[M]`` or per-group ``[M, G]`` scales, in ``dtype``."""
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    m, k = codes.shape
    if scales.ndim == 1:
        per_element = scales.to(wide)[:, None]
    else:
        per_element = scales.to(wide).repeat_interleave(BLOCK, dim=1)[:, :k]
    return (codes.to(wide) * per_element).to(dtype)


def fp8_gemm_reference(codes: torch.Tensor, scales: torch.Tensor, qw: QuantizedWeight,
                       bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.float32,
                       compute_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``dequant(codes) @ dequant(qw)ᵀ + bias`` in ``compute_dtype`` (float32 or float64), cast to ``out_dtype``."""
    if qw.fmt != "fp8" or codes.dtype != FP8_DTYPE:
        raise InvalidRequestError(f"fp8_gemm: needs fp8 activations and weights, found {codes.dtype} activations "
                                  f"and {qw.fmt} weights")
    y = dequantize_activations(codes, scales, compute_dtype) @ dequantize(qw, compute_dtype).T
    if bias is not None:
        y = y + bias.to(compute_dtype)
    return y.to(out_dtype)


def int8_weight_gemm_reference(x: torch.Tensor, qw: QuantizedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ dequant(qw)ᵀ + bias`` with the weight dequantized to ``x.dtype`` (weight-only: x is not quantized)."""
    return F.linear(x, dequantize(qw, x.dtype), None if bias is None else bias.to(x.dtype))


def quantized_linear_reference(x: torch.Tensor, qw: QuantizedWeight, bias: torch.Tensor | None = None,
                               act_quant: str | None = None) -> torch.Tensor:
    """The quantized layer ``[..., K] -> [..., N]``: weight-only (int8, or fp8 with ``act_quant=None``) in x's dtype;
    fp8 W8A8 (``act_quant`` ``"token"`` or ``"group"``) through float32, cast back to x's dtype."""
    check_act_quant(qw.fmt, act_quant)
    if x.shape[-1] != qw.in_features:
        raise InvalidRequestError(f"quantized_linear: x has {x.shape[-1]} channels, the weight takes "
                                  f"{qw.in_features}")
    if act_quant is None:
        return int8_weight_gemm_reference(x, qw, bias)
    flat = x.reshape(-1, qw.in_features)
    codes, scales = fp8_activation_quant_reference(flat, BLOCK if act_quant == "group" else None)
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    y = fp8_gemm_reference(codes, scales, qw, bias, out_dtype=x.dtype, compute_dtype=compute)
    return y.view(*x.shape[:-1], qw.out_features)
