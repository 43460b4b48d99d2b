"""Fusing linears that read the same input into one GEMM without keeping two copies of their weights, done once
when a model is loaded (``fuse_for_engine``): the loaded model is born fused and nothing re-points its weights
later. Linears loaded as 8-bit ``QuantizedLinear``s fuse the same way (``quantization.fuse_quantized_linears``):
the fused weight is then a ``QuantizedWeight``."""

from __future__ import annotations

import torch
from torch import nn

from ..quantization.modules import QuantizedLinear, fuse_quantized_linears


def share_storage(linears: list[nn.Linear], weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    """Point each linear's parameters at its rows of the concatenated ``weight`` (and ``bias``), so the modules
    (the reference path) and the fused GEMM (the engine) read one copy."""
    start = 0
    for lin in linears:
        rows = lin.weight.shape[0]
        lin.weight = nn.Parameter(weight[start:start + rows], requires_grad=False)
        if bias is not None:
            lin.bias = nn.Parameter(bias[start:start + rows], requires_grad=False)
        start += rows


def fuse_linears(linears: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Concatenate the linears' weights (and biases, when every one has one) along the output dimension and make
    the modules views of the result. Returns the fused ``(weight, bias)``."""
    with torch.no_grad():
        weight = torch.cat([lin.weight for lin in linears], dim=0)
        has_bias = all(lin.bias is not None for lin in linears)
        bias = torch.cat([lin.bias for lin in linears], dim=0) if has_bias else None
    share_storage(linears, weight, bias)
    return weight, bias


def fuse_loaded_linears(linears: list[nn.Module]):
    """``fuse_linears`` for float linears, ``fuse_quantized_linears`` for 8-bit ones (all of one kind)."""
    quantized = [isinstance(lin, QuantizedLinear) for lin in linears]
    if all(quantized):
        return fuse_quantized_linears(linears)
    if any(quantized):
        names = ", ".join(type(lin).__name__ for lin in linears)
        raise ValueError(f"fuse_loaded_linears: cannot fuse float and 8-bit linears into one GEMM ({names})")
    return fuse_linears(linears)


def fuse_qwen3_projections(backbone: nn.Module) -> None:
    """At load: every Qwen3 layer's q/k/v projections as one weight (``self_attn.qkv_weight``, ``qkv_bias``) and its
    gate/up projections as one (``mlp.gate_up_weight``), the modules' weights becoming views of them, so the
    reference modules and the engine's fused GEMMs read one copy and nothing is re-pointed later."""
    for layer in backbone.layers:
        attn, mlp = layer.self_attn, layer.mlp
        attn.qkv_weight, attn.qkv_bias = fuse_loaded_linears([attn.q_proj, attn.k_proj, attn.v_proj])
        mlp.gate_up_weight = fuse_loaded_linears([mlp.gate_proj, mlp.up_proj])[0]


def fuse_head_adaln(head: nn.Module) -> None:
    """At load: every adaLN linear of the diffusion head (the blocks' and the final layer's) as one weight
    (``head.adaln_weight``, ``head.adaln_bias``), the modules' weights views of it: the engine's head loop computes
    all of them in one GEMM per sampling step."""
    head.adaln_weight, head.adaln_bias = fuse_loaded_linears([*head.ada_ln_blocks,
                                                              head.final_layer.ada_ln_modulation])


def fuse_for_engine(backbone: nn.Module | None, head: nn.Module) -> None:
    """Every fusion a loaded model is born with (``backbone``: a Qwen3 backbone, or None when its projections are
    stored fused)."""
    with torch.no_grad():
        if backbone is not None:
            fuse_qwen3_projections(backbone)
        fuse_head_adaln(head)
