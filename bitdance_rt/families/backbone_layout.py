"""What the engine's one backbone loop (``engine/backbone.py``) needs to know of a family's transformer: its layer
facts (widths, heads, RMSNorm style and epsilon, whether queries and keys are RMS-normalised before a rotate-half
RoPE or rotated by interleaved pairs, an input norm) and each layer's tensors, q/k/v and gate/up already fused (the
loader fuses them: ``loading/fused_weights.py``).

Text-to-image (Qwen3): Hugging Face RMSNorm rounding, q/k RMSNorm then rotate-half RoPE at each row's positions,
grouped-query heads, an ``o_proj`` bias slot. Class-conditional: ``nn.RMSNorm`` rounding, interleaved 2-D RoPE in
generation order, full multi-head attention, ``emb_norm`` over the inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..quantization.modules import QuantizedLinear
from ..quantization.quantized_weight import QuantizedWeight


@dataclass(frozen=True)
class LayerWeights:
    """One layer's tensors. The four projection weights are float tensors, or ``QuantizedWeight``s when the model
    was loaded with 8-bit weights (``quantization/``); the engine's ``linear`` takes either."""
    attn_norm: torch.Tensor
    qkv: torch.Tensor | QuantizedWeight  # [(Hq + 2·Hkv)·D, W]: q, k and v projections, one GEMM
    qkv_bias: torch.Tensor | None
    q_norm: torch.Tensor | None         # [D] when queries and keys are RMS-normalised before RoPE
    k_norm: torch.Tensor | None
    out: torch.Tensor | QuantizedWeight  # [W, Hq·D]
    out_bias: torch.Tensor | None
    ffn_norm: torch.Tensor
    gate_up: torch.Tensor | QuantizedWeight  # [2·F, W]: gate and up projections, one GEMM (SwiGLU's halves)
    down: torch.Tensor | QuantizedWeight  # [W, F]


@dataclass(frozen=True)
class BackboneLayout:
    width: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn_width: int
    eps: float
    norm_style: str                     # "hf" (Qwen3) or "torch" (nn.RMSNorm) rounding
    input_norm: torch.Tensor | None     # an RMSNorm over the input embeddings, before the first layer
    final_norm: torch.Tensor
    layers: tuple[LayerWeights, ...]
    cos: torch.Tensor                   # RoPE tables by cache position, as the append operation takes them
    sin: torch.Tensor

    @property
    def qk_norm(self) -> bool:
        return self.layers[0].q_norm is not None

    @property
    def dtype(self) -> torch.dtype:
        return self.final_norm.dtype


def projection(module: nn.Module) -> torch.Tensor | QuantizedWeight:
    """A loaded projection's weight as the layer loop takes it: the float tensor of an ``nn.Linear``, the
    ``QuantizedWeight`` of a ``QuantizedLinear``."""
    return module.qweight if isinstance(module, QuantizedLinear) else module.weight
