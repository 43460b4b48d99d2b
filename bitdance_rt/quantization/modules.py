"""Quantizing a loaded (or meta-built) module's linears in place, one layer at a time.

- ``QuantizedLinear``: an ``nn.Module`` holding one ``QuantizedWeight`` (codes and scales as buffers), the bias in
  the model's dtype, and the activation mode; its forward is the reference math (``quantized_linear_reference``),
  so the reference backend runs quantized on the CPU. It has no ``weight`` attribute: code that reads
  ``layer.weight`` of a quantized layer fails loudly instead of reading float values that are gone.
- ``quantizable_linears(module)``: the names of the linears the issue quantizes: every ``nn.Linear`` of the module
  except those under ``EXCLUDED``: the head's time-embedding MLP (``time_embed``: run once per step count; the
  reference reads its dtype from ``mlp[0].weight``) and the projections to and from the 32-channel binary tokens
  (``input_proj``, ``final_layer.linear``, the class-conditional ``proj_in`` connector, the T2I projector's ``fc1``;
  the reference reads their dtype too). Embeddings, norms and the decoder hold no ``nn.Linear``. Call it on the
  backbone and on the head (the T2I projector is neither).
- ``quantize_linears(module, names, fmt, ...)``: replaces each named linear by a ``QuantizedLinear``. With ``fetch``
  (a ``key -> tensor`` reader such as ``TensorTable.fetch``) the float weight and bias are read from the file instead
  of the module, so the module may be built on the meta device and no full-precision copy of the model ever exists;
  peak memory above the 8-bit result is one layer's float weight plus one chunk's float32 copy.
- ``fuse_quantized_linears(layers)``: one weight for layers that read the same input (q/k/v, gate/up), the layers
  left as views of it (one copy), as ``engine.fused_weights.fuse_linears`` does for float weights.
- ``weights_bytes(module)``: bytes held by a module's parameters and buffers (8-bit codes and scales included),
  each storage counted once (fused weights share storage).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..errors import InvalidRequestError
from .formats import check_act_quant
from .quantized_weight import QuantizedWeight, concat_quantized, quantize_weight
from .reference_linear import quantized_linear_reference

EXCLUDED = ("time_embed", "input_proj", "final_layer.linear", "proj_in", "fc1")  # dotted parts of a module name


class QuantizedLinear(nn.Module):
    """``y = quantized_linear_reference(x, qweight, bias, act_quant)``: ``[..., K] -> [..., N]``."""

    def __init__(self, qweight: QuantizedWeight, bias: torch.Tensor | None, act_quant: str | None,
                 dtype: torch.dtype):
        super().__init__()
        check_act_quant(qweight.fmt, act_quant)
        self.fmt, self.block, self.act_quant, self.dtype = qweight.fmt, qweight.block, act_quant, dtype
        self.in_features, self.out_features = qweight.in_features, qweight.out_features
        self.register_buffer("data", qweight.data)
        self.register_buffer("scales", qweight.scales)
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype))

    @property
    def qweight(self) -> QuantizedWeight:
        return QuantizedWeight(self.data, self.scales, self.fmt, self.block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quantized_linear_reference(x, self.qweight, self.bias, self.act_quant)

    def extra_repr(self) -> str:
        scales = "per channel" if self.block is None else f"per {self.block}x{self.block} block"
        return (f"in_features={self.in_features}, out_features={self.out_features}, {self.fmt} weights {scales}, "
                f"act_quant={self.act_quant}, bias={self.bias is not None}, dtype={self.dtype}")


def _excluded(name: str, excluded: Iterable[str]) -> bool:
    """Whether ``name``'s dotted parts contain one of ``excluded`` as consecutive parts."""
    parts = name.split(".")
    for pattern in excluded:
        want = pattern.split(".")
        if any(parts[i:i + len(want)] == want for i in range(len(parts) - len(want) + 1)):
            return True
    return False


def quantizable_linears(module: nn.Module, excluded: Iterable[str] = EXCLUDED) -> list[str]:
    """Names (relative to ``module``) of the ``nn.Linear`` submodules to quantize, in module order."""
    return [name for name, sub in module.named_modules()
            if isinstance(sub, nn.Linear) and not _excluded(name, excluded)]


def _parent(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, leaf = name.rpartition(".")
    return (module.get_submodule(parent_name) if parent_name else module), leaf


def quantize_linears(module: nn.Module, names: Iterable[str], fmt: str, *, block: int | None = None,
                     act_quant: str | None = "token", fetch: Callable[[str], torch.Tensor] | None = None,
                     prefix: str = "") -> dict[str, int]:
    """Replace each named ``nn.Linear`` of ``module`` by a ``QuantizedLinear`` of format ``fmt`` (``"fp8"`` or
    ``"int8"``), in place, one layer at a time; returns ``{name: bytes of its codes and scales}``.

    ``act_quant``: ``"token"`` / ``"group"`` (fp8 W8A8) or ``None`` (weight-only; always None for int8, whatever is
    passed). ``fetch(prefix + name + ".weight")`` (and ``".bias"``) reads the float tensors when given (a meta-built
    module); otherwise the linear's own parameters are quantized and released. The QuantizedLinear's compute dtype
    is the source weight's dtype."""
    act_quant = None if fmt == "int8" else act_quant
    check_act_quant(fmt, act_quant)
    sizes = {}
    for name in names:
        linear = module.get_submodule(name)
        if not isinstance(linear, nn.Linear):
            raise InvalidRequestError(f"quantize_linears: {prefix + name!r} is a {type(linear).__name__}, not an "
                                      "nn.Linear; pass names from quantizable_linears()")
        key = prefix + name
        if fetch is not None:
            weight = fetch(key + ".weight")
            bias = fetch(key + ".bias") if linear.bias is not None else None
        else:
            weight, bias = linear.weight.detach(), None if linear.bias is None else linear.bias.detach()
        if tuple(weight.shape) != (linear.out_features, linear.in_features):
            raise InvalidRequestError(f"quantize_linears: {key}.weight has shape {list(weight.shape)}, the module "
                                      f"expects {[linear.out_features, linear.in_features]}")
        qweight = quantize_weight(weight, fmt, block=block, name=key + ".weight")
        parent, leaf = _parent(module, name)
        setattr(parent, leaf, QuantizedLinear(qweight, bias, act_quant, weight.dtype))
        sizes[name] = qweight.nbytes()
        del weight, bias, linear, qweight  # the float copy of this layer goes now
    return sizes


def fuse_quantized_linears(linears: list[QuantizedLinear]) -> tuple[QuantizedWeight, torch.Tensor | None]:
    """The quantized counterpart of ``engine.fused_weights.fuse_linears``: concatenate the layers' codes, scales
    (and biases, when every one has one) along the output dimension (``concat_quantized``) and make each layer's
    buffers views of the result, so the modules and the fused GEMM read one copy. Returns ``(weight, bias)``."""
    if not linears or not all(isinstance(lin, QuantizedLinear) for lin in linears):
        raise InvalidRequestError("fuse_quantized_linears: pass QuantizedLinear modules (quantize_linears first)")
    fused = concat_quantized([lin.qweight for lin in linears])
    has_bias = all(lin.bias is not None for lin in linears)
    bias = torch.cat([lin.bias for lin in linears]) if has_bias else None
    row = block_row = 0
    for lin in linears:
        rows = lin.out_features
        scale_rows = rows if lin.block is None else -(-rows // lin.block)
        lin.data = fused.data[row:row + rows]
        lin.scales = fused.scales[block_row:block_row + scale_rows]
        if has_bias:
            lin.bias = bias[row:row + rows]
        row, block_row = row + rows, block_row + scale_rows
    return fused, bias


def weights_bytes(module: nn.Module) -> int:
    """Bytes of every parameter and buffer of ``module``, each underlying storage once (meta tensors: by size)."""
    seen, total = set(), 0
    for t in [*module.parameters(), *module.buffers()]:
        if t.device.type == "meta":
            total += t.numel() * t.element_size()
            continue
        storage = t.untyped_storage()
        key = (t.device, storage.data_ptr())
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return total
