"""Loading a checkpoint part with 8-bit linears, quantized from the released float files one tensor at a time.

``load_part(factory, table, expected, part, quantization)``: with ``quantization=None`` this is ``load_into``;
with ``"fp8"`` or ``"int8"`` the part is built on the meta device, every linear ``quantizable_linears`` names is read
through ``table.fetch`` (in the target dtype, on the target device), quantized and its float copy dropped before the
next one (``quantize_linears``), and only then are the remaining tensors (embeddings, norms, the small projections
left in float) read and assigned. No full-precision copy of the quantized weights ever exists; the peak above the
result is one layer's float weight plus one quantizer chunk.

Which parts: the backbone and the diffusion head (``QUANTIZED_PARTS``); the T2I projector and the token decoder stay
in the checkpoint's precision.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import nn

from ..errors import CheckpointError
from ..quantization.formats import RUNTIME_ACT_QUANT
from ..quantization.modules import quantizable_linears, quantize_linears
from .tensor_files import TensorTable, check_shapes, load_into

QUANTIZED_PARTS = ("backbone", "head")
QUANTIZED_BUFFERS = ("data", "scales", "bias")  # the state-dict entries of a QuantizedLinear


def load_part(factory: Callable[[], nn.Module], table: TensorTable, expected: Mapping[str, tuple[int, ...]],
              part: str, quantization: str | None) -> nn.Module:
    """One checkpoint part, its linears in ``quantization`` when the part is one of ``QUANTIZED_PARTS``."""
    if quantization is None or part not in QUANTIZED_PARTS:
        return load_into(factory, table, expected, part)
    check_shapes(table, expected, part, allow_extra=True)
    with torch.device("meta"):
        module = factory()
    names = quantizable_linears(module)
    quantize_linears(module, names, quantization, block=None, act_quant=RUNTIME_ACT_QUANT[quantization],
                     fetch=table.fetch)
    quantized = {f"{n}.{p}" for n in names for p in ("weight", "bias")}
    state = {k: table.fetch(k) for k in expected if k not in quantized}
    result = module.load_state_dict(state, strict=False, assign=True)
    made_here = {f"{n}.{b}" for n in names for b in QUANTIZED_BUFFERS}
    missing = sorted(set(result.missing_keys) - made_here)
    if missing or result.unexpected_keys:
        raise CheckpointError(f"{part} ({table.files()}): after quantizing, key(s) {missing[:5]} were not loaded "
                              f"and {list(result.unexpected_keys)[:5]} were not expected; the module and the file "
                              "disagree.")
    return module.eval().requires_grad_(False)
