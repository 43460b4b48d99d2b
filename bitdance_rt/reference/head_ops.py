"""Functional forms of the diffusion head's per-step operations: the oracle the head's Triton kernels must equal.

``diffusion_head`` builds its blocks from these, so the math exists once. Every function works in the dtype of its
inputs (float64 included) and on any leading shape; the last dimension is the channel dimension D.

- ``modulate(x, scale, shift)``: ``x·(1+scale)+shift`` (adaLN modulation).
- ``layernorm_modulate_ref(x, scale, shift, weight, bias, eps)``: LayerNorm over D (affine when weight/bias are
  given), then ``modulate``.
- ``gated_residual_ref(x, h, gate)``: ``x + h·gate``.
- ``swiglu_ref(ab)``: ``silu(a)·b`` for ``a, b`` the two halves of the last dimension ``[..., 2H] -> [..., H]``.
- ``patch_attention_ref(qkv, head_dim)``: unmasked multi-head softmax attention among the P tokens of each patch,
  ``qkv [R, P, 3D]`` (chunks q, k, v along the last dimension) ``-> [R, P, D]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def layernorm_modulate_ref(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, weight: torch.Tensor | None,
                           bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    return modulate(F.layer_norm(x, (x.shape[-1],), weight, bias, eps), scale, shift)


def gated_residual_ref(x: torch.Tensor, h: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    return x + h * gate


def swiglu_ref(ab: torch.Tensor) -> torch.Tensor:
    a, b = ab.chunk(2, dim=-1)
    return F.silu(a) * b


def patch_attention_ref(qkv: torch.Tensor, head_dim: int) -> torch.Tensor:
    """``softmax(q·kᵀ·head_dim^-0.5)·v`` per head of ``head_dim`` channels; heads concatenated back to D."""
    rows, patch, three_d = qkv.shape
    width = three_d // 3
    heads = width // head_dim
    q, k, v = (t.reshape(rows, patch, heads, head_dim).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
    scores = (q * head_dim ** -0.5) @ k.transpose(-1, -2)
    out = torch.softmax(scores, dim=-1) @ v
    return out.transpose(1, 2).reshape(rows, patch, width)


def time_condition_ref(cond: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
    """The head's per-sampling-step condition ``silu(cond + time)``: ``cond [N, D]``, ``time [D]`` (the time
    embedding of the step, broadcast over the rows)."""
    return F.silu(cond + time)


def sigmoid_output_ref(x: torch.Tensor) -> torch.Tensor:
    """The head's output map of sigmoid-output models, ``2·sigmoid(x) − 1``."""
    return 2 * torch.sigmoid(x) - 1
