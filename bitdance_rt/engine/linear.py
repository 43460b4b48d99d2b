"""The engine's one linear: ``linear(ops, x, w, b)`` is ``F.linear`` for a float weight and the dispatcher's
``quantized_linear`` operation for an 8-bit ``QuantizedWeight`` (fp8 W8A8 with per-token activation scales, int8
weight-only: ``quantization.formats.RUNTIME_ACT_QUANT``), so the backbone's layer loop and the head's sampling loop
stay one code path whatever the model was loaded with.

``weight_and_bias(module)``: the ``(weight, bias)`` a loaded linear holds: ``(tensor, tensor | None)`` for an
``nn.Linear``, ``(QuantizedWeight, tensor | None)`` for a ``QuantizedLinear``. Read it once per model (building a
``QuantizedWeight`` checks its fields), not once per call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import OpSet
from ..quantization.formats import RUNTIME_ACT_QUANT
from ..quantization.modules import QuantizedLinear
from ..quantization.quantized_weight import QuantizedWeight

Weight = torch.Tensor | QuantizedWeight


def linear(ops: OpSet, x: torch.Tensor, w: Weight, b: torch.Tensor | None = None) -> torch.Tensor:
    """``x [..., K] @ wᵀ + b`` -> ``[..., N]`` in x's dtype."""
    if isinstance(w, QuantizedWeight):
        return ops.quantized_linear(x, w, b, act_quant=RUNTIME_ACT_QUANT[w.fmt])
    return F.linear(x, w, b)


def weight_and_bias(module: nn.Module) -> tuple[Weight, torch.Tensor | None]:
    if isinstance(module, QuantizedLinear):
        return module.qweight, module.bias
    if isinstance(module, nn.Linear):
        return module.weight, module.bias
    raise TypeError(f"weight_and_bias: {type(module).__name__} is neither an nn.Linear nor a QuantizedLinear")
