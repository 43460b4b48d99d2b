"""The engine's linears: ``linear(ops, x, w, b)``, ``linear_swiglu(ops, x, w, b)`` (``silu(gate)·up`` of a fused
``[2H, K]`` gate/up weight) and ``linear_gated_residual(ops, x, h, w, b, gate)`` (``x += gate·(h @ wᵀ + b)`` in
place), so the backbone's layer loop and the head's sampling loop stay one code path whatever the model was loaded
with:

- an 8-bit ``QuantizedWeight``: always our GEMM (``quantized_linear``, or the fused ``linear_swiglu`` /
  ``linear_gated_residual`` operations: the epilogue in the GEMM's store), fp8 W8A8 with per-token activation scales,
  int8 weight-only (``quantization.formats.RUNTIME_ACT_QUANT``);
- a float weight: cuBLAS (``F.linear``, then the separate ``swiglu`` / ``gated_residual`` operations) unless
  ``ops.gemm_choice`` says our ``float_gemm`` with the epilogue fused wins at this shape (``ops.float_gemm``:
  ``"measured"``, ``"ours"``, ``"cublas"``); with the PyTorch provider the fused operations are the references.

``weight_and_bias(module)``: the ``(weight, bias)`` a loaded linear holds: ``(tensor, tensor | None)`` for an
``nn.Linear``, ``(QuantizedWeight, tensor | None)`` for a ``QuantizedLinear``. Read it once per model (building a
``QuantizedWeight`` checks its fields), not once per call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import OpSet
from ..ops.gemm_choice import choice_for
from ..quantization.formats import RUNTIME_ACT_QUANT
from ..quantization.modules import QuantizedLinear
from ..quantization.quantized_weight import QuantizedWeight

Weight = torch.Tensor | QuantizedWeight
FUSED_OPS = {"bias": "float_linear", "swiglu": "linear_swiglu", "gated_residual": "linear_gated_residual"}


def linear(ops: OpSet, x: torch.Tensor, w: Weight, b: torch.Tensor | None = None) -> torch.Tensor:
    """``x [..., K] @ wᵀ + b`` -> ``[..., N]`` in x's dtype."""
    if isinstance(w, QuantizedWeight):
        return ops.quantized_linear(x, w, b, act_quant=RUNTIME_ACT_QUANT[w.fmt])
    ours, splits = _float_choice(ops, x, w, "bias")
    return ops.float_linear(x, w, b, split_k=splits) if ours else F.linear(x, w, b)


def linear_swiglu(ops: OpSet, x: torch.Tensor, w: Weight, b: torch.Tensor | None = None) -> torch.Tensor:
    """``silu(x @ w_gateᵀ + b_gate) · (x @ w_upᵀ + b_up)`` for ``w [2H, K]`` (gate rows, then up rows)
    -> ``[..., H]``."""
    if isinstance(w, QuantizedWeight):
        return ops.linear_swiglu(x, w, b, act_quant=RUNTIME_ACT_QUANT[w.fmt])
    ours, splits = _float_choice(ops, x, w, "swiglu")
    return ops.linear_swiglu(x, w, b, split_k=splits) if ours else ops.swiglu(F.linear(x, w, b))


def linear_gated_residual(ops: OpSet, x: torch.Tensor, h: torch.Tensor, w: Weight, b: torch.Tensor | None,
                          gate: torch.Tensor) -> torch.Tensor:
    """``x [M, N] += gate [M, N] · (h [M, K] @ wᵀ + b)`` in place; returns x (the residual stream)."""
    if isinstance(w, QuantizedWeight):
        return ops.linear_gated_residual(x, h, w, b, gate, act_quant=RUNTIME_ACT_QUANT[w.fmt])
    ours, splits = _float_choice(ops, h, w, "gated_residual")
    if ours:
        return ops.linear_gated_residual(x, h, w, b, gate, split_k=splits)
    return ops.gated_residual(x, F.linear(h, w, b), gate, out=x)


def _float_choice(ops: OpSet, x: torch.Tensor, w: torch.Tensor, epilogue: str) -> tuple[bool, int | None]:
    """Ours (and its split count) or cuBLAS for a float weight: only where the fused operation is our kernel."""
    if ops.chosen.get(FUSED_OPS[epilogue]) != "triton":
        return False, None
    n, k = w.shape
    return choice_for(ops.float_gemm, x.device, x.dtype, epilogue, x.numel() // max(k, 1), n, k)


def weight_and_bias(module: nn.Module) -> tuple[Weight, torch.Tensor | None]:
    if isinstance(module, QuantizedLinear):
        return module.qweight, module.bias
    if isinstance(module, nn.Linear):
        return module.weight, module.bias
    raise TypeError(f"weight_and_bias: {type(module).__name__} is neither an nn.Linear nor a QuantizedLinear")
