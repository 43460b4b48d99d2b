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
- ``input_projection_ref(x_half, weight, bias, mult)``: the head's ``input_proj`` of the noisy tokens for every
  guidance half, ``[B, P, C] -> [mult·B·P, D]``.
- ``final_layer_ref(x, scale, shift, weight, bias, eps, sigmoid)``: the final layer (affine-free LayerNorm,
  modulation, linear ``D -> C``, optional ``2·sigmoid − 1``), ``[N, D] -> [N, C]``.
- ``final_layer_step_ref(...)``: the final layer, then one Euler–Maruyama step of the sampler from its prediction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .sampler import step_from_prediction


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


def input_projection_ref(x_half: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         mult: int) -> torch.Tensor:
    """``input_proj(x_half.to(dtype))`` with its rows repeated ``mult`` times (the guided batch's two halves see the
    same x): x_half ``[B, P, C]`` (float32 sample), weight ``[D, C]``, bias ``[D]`` -> ``[mult·B·P, D]`` in the
    weight's dtype."""
    y = F.linear(x_half.to(weight.dtype), weight, bias).reshape(-1, weight.shape[0])
    return y.repeat(mult, 1) if mult > 1 else y.contiguous()


def final_layer_ref(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor | None, eps: float, sigmoid: bool) -> torch.Tensor:
    """The head's final layer on the last block's output: ``linear(LN(x)·(1+scale)+shift)`` (LayerNorm without
    affine, the normalised rows rounded to x's dtype as the unfused chain stores them), then ``2·sigmoid − 1`` when
    ``sigmoid``. x, scale, shift ``[N, D]``, weight ``[C, D]``, bias ``[C]`` -> ``[N, C]`` in the weight's dtype."""
    h = layernorm_modulate_ref(x, scale, shift, None, None, eps).to(x.dtype)
    out = F.linear(h, weight, bias)
    return sigmoid_output_ref(out) if sigmoid else out


def final_layer_step_ref(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor | None, eps: float, sigmoid: bool, sample: torch.Tensor,
                         noise: torch.Tensor, t: torch.Tensor, dt: torch.Tensor, cfg: float | torch.Tensor,
                         guided: bool) -> torch.Tensor:
    """``final_layer_ref`` for the hidden rows ``x [m·B·P, D]`` of ``cat([sample]*m)`` (conditional rows first when
    guided, m = 2), then ``sampler.step_from_prediction`` from that prediction: the new sample ``[B, P, C]``
    float32. sample, noise ``[B, P, C]`` float32; t, dt 0-d float32; cfg a float or a float32 tensor ``[1]`` /
    ``[B]``."""
    b, p, c = sample.shape
    pred = final_layer_ref(x, scale, shift, weight, bias, eps, sigmoid).reshape(-1, p, c)
    return step_from_prediction(pred.float(), sample, t, dt, noise, cfg, guided)
