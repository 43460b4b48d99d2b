"""``quantized_linear``: one quantized layer on the fast path, the function the engine calls per linear.

``quantized_linear(x, qw, bias, act_quant=..., gemm="triton")``: ``x [..., K]`` -> ``[..., N]`` in x's dtype, equal
to ``quantized_linear_reference`` (within the kernels' tolerances; the fp8 activation codes and scales bit for bit):

- int8 weights (weight-only): ``kernels.int8_weight_gemm`` on x as it is;
- fp8 weights with ``act_quant`` ``"token"`` or ``"group"`` (W8A8): ``kernels.fp8_activation_quant``, then
  ``kernels.fp8_gemm`` (``gemm="triton"``) or ``torch._scaled_mm`` (``gemm="scaled_mm"``: per token and per channel
  only, see ``scaled_mm``);
- fp8 weights with ``act_quant=None`` (weight-only fp8) have no fast path here (measured slower than bf16 at 128
  rows elsewhere); the reference runs them.

The fused epilogues of ``kernels._gemm_epilogue`` (SwiGLU, the gated residual) run in the GEMM's store
(``epilogue=``). x may have any leading shape; its last dimension must be contiguous. Triton is imported on the
first call.
"""

from __future__ import annotations

import torch

from ..errors import InvalidRequestError
from .formats import BLOCK, check_act_quant
from .quantized_weight import QuantizedWeight

GEMMS = ("triton", "scaled_mm")


def quantized_linear(x: torch.Tensor, qw: QuantizedWeight, bias: torch.Tensor | None = None, *,
                     act_quant: str | None = "token", gemm: str = "triton", epilogue: str = "bias",
                     gate: torch.Tensor | None = None, out: torch.Tensor | None = None,
                     split_k: int | None = None) -> torch.Tensor:
    """``epilogue`` (``kernels._gemm_epilogue``): ``"bias"`` (the plain layer), ``"swiglu"`` (``qw`` holds gate rows
    then up rows ``[2H, K]``; returns ``silu(gate)·up [..., H]``), ``"gated_residual"`` (``out`` is the residual
    stream ``[M, N]``, updated in place: ``out += gate·(x @ Wᵀ + bias)``; x 2-D). With ``gemm="scaled_mm"`` the
    epilogue runs as its own kernel after the GEMM. ``split_k`` forces the K ranges of the Triton GEMMs."""
    act_quant = None if qw.fmt == "int8" else act_quant
    check_act_quant(qw.fmt, act_quant)
    if gemm not in GEMMS:
        raise InvalidRequestError(f"quantized_linear: gemm must be one of {GEMMS}, found {gemm!r}")
    if x.shape[-1] != qw.in_features:
        raise InvalidRequestError(f"quantized_linear: x has {x.shape[-1]} channels, the weight takes "
                                  f"{qw.in_features}")
    flat = x.reshape(-1, qw.in_features)
    fused = dict(epilogue=epilogue, gate=gate, out=out, split_k=split_k)
    if qw.fmt == "int8":
        from bitdance_rt.kernels.int8_weight_gemm import int8_weight_gemm
        y = int8_weight_gemm(flat, qw.data, qw.scales, bias, **fused)
    elif act_quant is None:
        raise InvalidRequestError("quantized_linear: weight-only fp8 (act_quant=None) has no fast path; use "
                                  "act_quant='token' or 'group', int8 weights, or quantized_linear_reference")
    else:
        from bitdance_rt.kernels.fp8_activation_quant import fp8_activation_quant
        codes, scales = fp8_activation_quant(flat, BLOCK if act_quant == "group" else None)
        if gemm == "scaled_mm":
            from .scaled_mm import fp8_gemm_scaled_mm
            y = fp8_gemm_scaled_mm(codes, scales, qw, bias, out_dtype=x.dtype)
            y = _separate_epilogue(y, epilogue, gate, out)
        else:
            from bitdance_rt.kernels.fp8_gemm import fp8_gemm
            y = fp8_gemm(codes, scales, qw.data, qw.scales, bias, out_dtype=x.dtype, **fused)
    if epilogue == "gated_residual":
        return y
    return y.view(*x.shape[:-1], y.shape[-1])


def _separate_epilogue(y: torch.Tensor, epilogue: str, gate: torch.Tensor | None,
                       out: torch.Tensor | None) -> torch.Tensor:
    """The epilogue of a GEMM that has none (``torch._scaled_mm``), as the separate Triton kernels."""
    if epilogue == "swiglu":
        from bitdance_rt.kernels.swiglu import swiglu
        return swiglu(y, out=out)
    if epilogue == "gated_residual":
        from bitdance_rt.kernels.gated_residual import gated_residual
        return gated_residual(out, y, gate, out=out)
    return y if out is None else out.copy_(y)
