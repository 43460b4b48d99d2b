"""Argument checks and the q output buffer of the pre-attention launchers, shared by the Triton kernel
(``kernels/pre_attention.py``) and the CUDA operator (``bitdance_rt/cuda_ops/pre_attention.py``); imports no Triton.

Shapes: q ``[B, T, Hq, D]``, k and v ``[B, T, Hkv, D]`` (float32, bfloat16 or float16, alike; strided views with
channel stride 1 are fine), norm weights ``[D]`` in q's dtype (rotate-half form only), float32 cos/sin tables
``[max_pos, D]`` (rotate-half) or ``[max_pos, D/2]`` (interleaved), caches ``[B, Hkv, Lmax, D]`` contiguous,
``lengths`` int32 ``[B]`` on the device, ``q_out`` ``[B, Hq, T, D]``. Every error names the launcher, the argument
and what to pass.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from bitdance_rt.ops.argument_checks import check_tensor

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class PreAttentionShape(NamedTuple):
    batch: int
    length: int
    q_heads: int
    kv_heads: int
    head_dim: int
    max_pos: int
    max_len: int


def _check_channel_stride(op: str, name: str, t: torch.Tensor) -> None:
    if t.stride(-1) != 1:
        raise ValueError(f"{op}: {name} must have stride 1 in its last (channel) dim, found strides "
                         f"{tuple(t.stride())}; call .contiguous() first")


def check_pre_attention(op: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        norm_weights: tuple[torch.Tensor, torch.Tensor] | None, eps: float, cos_table: torch.Tensor,
                        sin_table: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor,
                        q_out: torch.Tensor | None, interleaved: bool,
                        compiled_head_dims: tuple[int, ...] | None = None) -> PreAttentionShape:
    """Check every argument of a pre-attention launch; ``norm_weights`` is ``(q_norm_weight, k_norm_weight)`` for
    the rotate-half (Qwen3) form, None for the interleaved form; ``compiled_head_dims``: the head dims a compiled
    (CUDA) launcher instantiates, None for any even one."""
    if norm_weights is not None:
        for name, weight in zip(("q_norm_weight", "k_norm_weight"), norm_weights):
            if not isinstance(weight, torch.Tensor):
                raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(weight).__name__}")
    check_tensor(op, "q", q, shape=(None, None, None, None), dtype=FLOAT_DTYPES, contiguous=False)
    batch, length, q_heads, head_dim = q.shape
    dtype, device = q.dtype, q.device
    check_tensor(op, "k", k, shape=(batch, length, None, head_dim), dtype=dtype, device=device, contiguous=False)
    kv_heads = k.shape[2]
    check_tensor(op, "v", v, shape=(batch, length, kv_heads, head_dim), dtype=dtype, device=device,
                 contiguous=False)
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_channel_stride(op, name, t)
    if head_dim % 2:
        raise ValueError(f"{op}: head dim D = {head_dim} must be even for RoPE")
    if compiled_head_dims is not None and head_dim not in compiled_head_dims:
        raise ValueError(f"{op}: head dim D = {head_dim} is not compiled into the CUDA kernel (it has "
                         f"{', '.join(map(str, compiled_head_dims))}); use the Triton kernel "
                         "(kernels/pre_attention.py)")
    if kv_heads == 0 or q_heads % kv_heads:
        raise ValueError(f"{op}: q has {q_heads} heads, k and v {kv_heads}; expected a divisor of {q_heads}")
    table_width = head_dim // 2 if interleaved else head_dim
    check_tensor(op, "cos_table", cos_table, shape=(None, table_width), dtype=torch.float32, device=device)
    max_pos = cos_table.shape[0]
    check_tensor(op, "sin_table", sin_table, shape=(max_pos, table_width), dtype=torch.float32, device=device)
    check_tensor(op, "k_cache", k_cache, shape=(batch, kv_heads, None, head_dim), dtype=dtype, device=device)
    max_len = k_cache.shape[2]
    check_tensor(op, "v_cache", v_cache, shape=(batch, kv_heads, max_len, head_dim), dtype=dtype, device=device)
    check_tensor(op, "lengths", lengths, shape=(batch,), dtype=torch.int32, device=device)
    if norm_weights is not None:
        check_tensor(op, "q_norm_weight", norm_weights[0], shape=(head_dim,), dtype=dtype, device=device)
        check_tensor(op, "k_norm_weight", norm_weights[1], shape=(head_dim,), dtype=dtype, device=device)
        if not eps > 0:
            raise ValueError(f"{op}: eps must be a positive number, found {eps!r}")
    if q_out is not None:
        check_tensor(op, "q_out", q_out, shape=(batch, q_heads, length, head_dim), dtype=dtype, device=device)
    return PreAttentionShape(batch, length, q_heads, kv_heads, head_dim, max_pos, max_len)


def q_output(q: torch.Tensor, shape: PreAttentionShape, q_out: torch.Tensor | None) -> torch.Tensor:
    """``q_out``, or a new ``[B, Hq, T, D]`` tensor in q's dtype."""
    if q_out is not None:
        return q_out
    return torch.empty(shape.batch, shape.q_heads, shape.length, shape.head_dim, dtype=q.dtype, device=q.device)
