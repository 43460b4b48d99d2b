"""The backbone on the engine's operations: one layer loop for both families, driven by the family's layer facts
(``families/backbone_layout.py``).

Per layer: ``rmsnorm_residual`` (the family's rounding style) -> one GEMM for q/k/v -> the pre-attention append
(``qk_norm_rope_append``: q/k RMSNorm and rotate-half RoPE, or ``rope_append_interleaved``: interleaved RoPE; K/V
written into the cache at each row's length) -> ``attend(layer, q)`` (prefill or decode attention, chosen by the
caller) -> the output projection -> ``rmsnorm_residual`` -> one GEMM for gate/up with SwiGLU
(``linear.linear_swiglu``: fused into our GEMM's epilogue for 8-bit weights, and for float weights where
``ops.gemm_choice`` picks ours) -> the down projection. Every other GEMM goes through ``linear.linear``. The residual
adds stay in ``rmsnorm_residual`` (ungated: nothing to fuse into the down/output projections). An input RMSNorm
(class-conditional ``emb_norm``) runs first when the family has one; the final norm closes.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..families.backbone_layout import BackboneLayout
from ..ops import OpSet
from .linear import linear, linear_swiglu
from .static_cache import StaticKVCache

Attend = Callable[[int, torch.Tensor], torch.Tensor]


def run_layers(ops: OpSet, layout: BackboneLayout, x: torch.Tensor, cache: StaticKVCache, attend: Attend
               ) -> torch.Tensor:
    """Every layer and the final norm over input embeddings ``x [B, T, W]``; ``attend(layer, q [B, Hq, T, D])``
    returns the attention output ``[B, Hq, T, D]``. Returns the hidden states ``[B, T, W]``."""
    b, t, width = x.shape
    hq, hkv, d, eps, style = layout.heads, layout.kv_heads, layout.head_dim, layout.eps, layout.norm_style
    h = x.reshape(b * t, width)
    if layout.input_norm is not None:
        h, _ = ops.rmsnorm_residual(h, None, layout.input_norm, eps, style=style)
    residual = None
    for i, w in enumerate(layout.layers):
        y, residual = ops.rmsnorm_residual(h, residual, w.attn_norm, eps, style=style)
        qkv = linear(ops, y, w.qkv, w.qkv_bias).view(b, t, hq + 2 * hkv, d)
        q, k, v = qkv[:, :, :hq], qkv[:, :, hq:hq + hkv], qkv[:, :, hq + hkv:]
        if w.q_norm is not None:
            q = ops.qk_norm_rope_append(q, k, v, w.q_norm, w.k_norm, eps, layout.cos, layout.sin, cache.keys[i],
                                        cache.values[i], cache.lengths)
        else:
            q = ops.rope_append_interleaved(q, k, v, layout.cos, layout.sin, cache.keys[i], cache.values[i],
                                            cache.lengths)
        out = attend(i, q).transpose(1, 2).reshape(b * t, hq * d)
        h = linear(ops, out, w.out, w.out_bias)
        y, residual = ops.rmsnorm_residual(h, residual, w.ffn_norm, eps, style=style)
        h = linear(ops, linear_swiglu(ops, y, w.gate_up), w.down)
    y, _ = ops.rmsnorm_residual(h, residual, layout.final_norm, eps, style=style)
    return y.view(b, t, width)
