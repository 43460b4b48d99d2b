"""The fused pre-attention step of the Qwen3 backbone on the CUDA extension (``csrc/pre_attention.cu``).

``qk_norm_rope_append(q, k, v, q_norm_weight, k_norm_weight, eps, cos_table, sin_table, k_cache, v_cache, lengths,
q_out=None)``: per head RMSNorm of q and k (HF rule), rotate-half RoPE at position ``lengths[b] + t``, K and V
written into the caches at rows ``[lengths[b], lengths[b] + T)``; returns q ``[B, Hq, T, D]``. One launch.

The Triton launcher's signature, checks and semantics (``kernels/kv_append.py``): q ``[B, T, Hq, D]``, k and v
``[B, T, Hkv, D]`` (float32, bfloat16 or float16; strided views with channel stride 1, such as slices of one qkv
projection), norm weights ``[D]`` in q's dtype, float32 tables ``[max_pos, D]``, caches ``[B, Hkv, Lmax, D]``
contiguous, ``lengths`` int32 ``[B]`` on the device (not read on the host: the caller keeps
``lengths[b] + T`` within the tables and caches; positions outside the cache are not written, outside the tables
q and k come out as zeros). Head dims 16, 32, 64, 128 and 256 are compiled (the Triton kernel takes any even D).
Outputs are written in place, so the call can be captured in a CUDA graph when ``q_out`` is given.
"""

from __future__ import annotations

import torch

from bitdance_rt.ops.argument_checks import check_tensor
from bitdance_rt.reference.pre_attention import qk_norm_rope_append_reference
from bitdance_rt.cuda_ops._extension import operator

REFERENCE = qk_norm_rope_append_reference

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
HEAD_DIMS = (16, 32, 64, 128, 256)  # the head dims csrc/pre_attention.cu instantiates


def _operator(op: str, device: torch.device):
    return operator(op, device, "kv_append", "pre_attention.cu")


def _check_channel_stride(op: str, name: str, t: torch.Tensor) -> None:
    if t.stride(-1) != 1:
        raise ValueError(f"{op}: {name} must have stride 1 in its last (channel) dim, found strides "
                         f"{tuple(t.stride())}; call .contiguous() first")


def qk_norm_rope_append(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_norm_weight: torch.Tensor,
                        k_norm_weight: torch.Tensor, eps: float, cos_table: torch.Tensor, sin_table: torch.Tensor,
                        k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor,
                        q_out: torch.Tensor | None = None) -> torch.Tensor:
    """Qwen3 q/k per-head RMSNorm + rotate-half RoPE at ``lengths[b] + t``, K/V appended; returns q
    ``[B, Hq, T, D]``."""
    op = "qk_norm_rope_append"
    for name, weight in (("q_norm_weight", q_norm_weight), ("k_norm_weight", k_norm_weight)):
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
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"{op}: head dim D = {head_dim} is not compiled into the CUDA kernel (it has "
                         f"{', '.join(map(str, HEAD_DIMS))}); use the Triton kernel (kernels/kv_append.py)")
    if kv_heads == 0 or q_heads % kv_heads:
        raise ValueError(f"{op}: q has {q_heads} heads, k and v {kv_heads}; expected a divisor of {q_heads}")
    check_tensor(op, "cos_table", cos_table, shape=(None, head_dim), dtype=torch.float32, device=device)
    max_pos = cos_table.shape[0]
    check_tensor(op, "sin_table", sin_table, shape=(max_pos, head_dim), dtype=torch.float32, device=device)
    check_tensor(op, "k_cache", k_cache, shape=(batch, kv_heads, None, head_dim), dtype=dtype, device=device)
    max_len = k_cache.shape[2]
    check_tensor(op, "v_cache", v_cache, shape=(batch, kv_heads, max_len, head_dim), dtype=dtype, device=device)
    check_tensor(op, "lengths", lengths, shape=(batch,), dtype=torch.int32, device=device)
    check_tensor(op, "q_norm_weight", q_norm_weight, shape=(head_dim,), dtype=dtype, device=device)
    check_tensor(op, "k_norm_weight", k_norm_weight, shape=(head_dim,), dtype=dtype, device=device)
    if not eps > 0:
        raise ValueError(f"{op}: eps must be a positive number, found {eps!r}")
    if q_out is not None:
        check_tensor(op, "q_out", q_out, shape=(batch, q_heads, length, head_dim), dtype=dtype, device=device)
    kernel = _operator(op, device)
    if q_out is None:
        q_out = torch.empty(batch, q_heads, length, head_dim, dtype=dtype, device=device)
    kernel(q, k, v, q_norm_weight, k_norm_weight, float(eps), cos_table, sin_table, k_cache, v_cache, lengths, q_out)
    return q_out
