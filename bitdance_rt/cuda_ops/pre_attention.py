"""The fused pre-attention step of the Qwen3 backbone on the CUDA extension (``csrc/pre_attention.cu``).

``qk_norm_rope_append(q, k, v, q_norm_weight, k_norm_weight, eps, cos_table, sin_table, k_cache, v_cache, lengths,
q_out=None)``: per head RMSNorm of q and k (HF rule), rotate-half RoPE at position ``lengths[b] + t``, K and V
written into the caches at rows ``[lengths[b], lengths[b] + T)``; returns q ``[B, Hq, T, D]``. One launch.

The Triton launcher's signature, checks (``ops/pre_attention_contract.py``) and semantics
(``kernels/pre_attention.py``): q ``[B, T, Hq, D]``, k and v ``[B, T, Hkv, D]`` (float32, bfloat16 or float16;
strided views with channel stride 1, such as slices of one qkv projection), norm weights ``[D]`` in q's dtype, float32 tables ``[max_pos, D]``, caches ``[B, Hkv, Lmax, D]``
contiguous, ``lengths`` int32 ``[B]`` on the device (not read on the host: the caller keeps
``lengths[b] + T`` within the tables and caches; positions outside the cache are not written, outside the tables
q and k come out as zeros). Head dims 16, 32, 64, 128 and 256 are compiled (the Triton kernel takes any even D).
Outputs are written in place, so the call can be captured in a CUDA graph when ``q_out`` is given.
"""

from __future__ import annotations

import torch

from bitdance_rt.ops.pre_attention_contract import check_pre_attention, q_output
from bitdance_rt.reference.pre_attention import qk_norm_rope_append_reference
from bitdance_rt.cuda_ops._extension import operator

REFERENCE = qk_norm_rope_append_reference

HEAD_DIMS = (16, 32, 64, 128, 256)  # the head dims csrc/pre_attention.cu instantiates


def _operator(op: str, device: torch.device):
    return operator(op, device, "pre_attention", "pre_attention.cu")


def qk_norm_rope_append(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_norm_weight: torch.Tensor,
                        k_norm_weight: torch.Tensor, eps: float, cos_table: torch.Tensor, sin_table: torch.Tensor,
                        k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor,
                        q_out: torch.Tensor | None = None) -> torch.Tensor:
    """Qwen3 q/k per-head RMSNorm + rotate-half RoPE at ``lengths[b] + t``, K/V appended; returns q
    ``[B, Hq, T, D]``."""
    op = "qk_norm_rope_append"
    shape = check_pre_attention(op, q, k, v, (q_norm_weight, k_norm_weight), eps, cos_table, sin_table, k_cache,
                                v_cache, lengths, q_out, interleaved=False, compiled_head_dims=HEAD_DIMS)
    kernel = _operator(op, q.device)
    q_out = q_output(q, shape, q_out)
    kernel(q, k, v, q_norm_weight, k_norm_weight, float(eps), cos_table, sin_table, k_cache, v_cache, lengths, q_out)
    return q_out
