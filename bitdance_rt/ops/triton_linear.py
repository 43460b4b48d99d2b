"""Triton-provider linears with fused epilogues (``kernels._gemm_epilogue``), for float weights
(``kernels.float_gemm``) and 8-bit ``QuantizedWeight`` (``quantization.fast_linear``: ``int8_weight_gemm``, or the fp8
activation quantizer then ``fp8_gemm``):

- ``float_linear(x, w, b)``: ``x [..., K] @ wᵀ + b`` on our float GEMM;
- ``linear_swiglu(x, w, b)``: ``silu(x·w_gateᵀ + b_gate)·(x·w_upᵀ + b_up)`` for ``w [2H, K]`` (gate rows, then up
  rows) -> ``[..., H]``;
- ``linear_gated_residual(x, h, w, b, gate)``: ``x += gate·(h @ wᵀ + b)`` in place (``x, gate [M, N]``, ``h [M, K]``;
  gate may be a strided column chunk), returns x.

``act_quant``: the fp8 weights' activation scales (``"token"`` / ``"group"``; int8 and float weights ignore it).
``split_k``: forced K ranges (None: the tile rule). Whether the engine calls these for a float weight or cuBLAS plus
the separate kernels is ``ops.gemm_choice``'s decision (``engine/linear.py``).
"""

from __future__ import annotations

import torch

from ..quantization.quantized_weight import QuantizedWeight


def _gemm(x: torch.Tensor, w, b, epilogue: str, gate=None, out=None, act_quant="token", split_k=None):
    if isinstance(w, QuantizedWeight):
        from ..quantization.fast_linear import quantized_linear
        return quantized_linear(x, w, b, act_quant=act_quant, epilogue=epilogue, gate=gate, out=out,
                                split_k=split_k)
    from ..kernels.float_gemm import float_gemm
    if x.shape[-1] != w.shape[-1]:
        raise ValueError(f"{epilogue} linear: x has {x.shape[-1]} channels, the weight [{w.shape[0]}, {w.shape[1]}] "
                         f"takes {w.shape[1]}")
    flat = x.reshape(-1, x.shape[-1])
    y = float_gemm(flat, w, b, out=out, split_k=split_k, epilogue=epilogue, gate=gate)
    return y if epilogue == "gated_residual" else y.view(*x.shape[:-1], y.shape[-1])


def float_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, *,
                 split_k: int | None = None) -> torch.Tensor:
    return _gemm(x, w, b, "bias", split_k=split_k)


def linear_swiglu(x: torch.Tensor, w, b: torch.Tensor | None = None, *, act_quant: str | None = "token",
                  split_k: int | None = None) -> torch.Tensor:
    return _gemm(x, w, b, "swiglu", act_quant=act_quant, split_k=split_k)


def linear_gated_residual(x: torch.Tensor, h: torch.Tensor, w, b: torch.Tensor | None, gate: torch.Tensor, *,
                          act_quant: str | None = "token", split_k: int | None = None) -> torch.Tensor:
    return _gemm(h, w, b, "gated_residual", gate=gate, out=x, act_quant=act_quant, split_k=split_k)
