"""The diffusion head's self-attention among the P tokens of one patch: unmasked, no positional encoding.

Input: the fused projection ``qkv [R, P, 3·D]`` (R patches; chunks q, k, v along the last dimension, each split
into ``D / head_dim`` heads of ``head_dim`` channels). Output ``[R, P, D]``: ``softmax(q·kᵀ·head_dim^-0.5)·v`` per
(patch, head), heads side by side as in the input chunks. ``qkv`` and ``out`` may have any row and token strides;
channels must be contiguous. Dtypes: float32 (IEEE products) or bfloat16/float16 (tensor-core products, float32
accumulation and softmax), alike.

One program per (patch, head) loads its q, k, v tiles once; P (at most ``MAX_PATCH``) and head_dim are padded to
powers of two of at least 16 (the smallest ``tl.dot`` tile) with masked loads, padded keys get a score of −inf.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from bitdance_rt.ops.argument_checks import check_tensor
from bitdance_rt.reference.head_ops import patch_attention_ref

REFERENCE = patch_attention_ref
KERNEL = "patch_attention"
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_PATCH = 64
MIN_DOT = 16


@triton.jit
def _patch_attention_kernel(qkv_ptr, out_ptr, qkv_row_stride, qkv_token_stride, out_row_stride, out_token_stride,
                            patch, width, score_scale_log2,
                            HEAD_DIM: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_HD: tl.constexpr,
                            DOT_PRECISION: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    tokens = tl.arange(0, BLOCK_P)
    chans = tl.arange(0, BLOCK_HD)
    token_ok = tokens < patch
    tile_ok = token_ok[:, None] & (chans < HEAD_DIM)[None, :]
    q_ptrs = qkv_ptr + row * qkv_row_stride + tokens[:, None] * qkv_token_stride + head * HEAD_DIM + chans[None, :]
    q = tl.load(q_ptrs, mask=tile_ok, other=0.0)
    k = tl.load(q_ptrs + width, mask=tile_ok, other=0.0)
    v = tl.load(q_ptrs + 2 * width, mask=tile_ok, other=0.0)
    # scores in base 2: softmax(s) = exp2(s·log2(e) − max) / sum
    scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * score_scale_log2
    scores = tl.where(token_ok[None, :], scores, float("-inf"))
    weights = tl.exp2(scores - tl.max(scores, axis=1)[:, None])
    total = tl.sum(weights, axis=1)
    out = tl.dot(weights.to(v.dtype), v, input_precision=DOT_PRECISION) / total[:, None]
    out_ptrs = out_ptr + row * out_row_stride + tokens[:, None] * out_token_stride + head * HEAD_DIM + chans[None, :]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=tile_ok)


def patch_attention(qkv: torch.Tensor, head_dim: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Per-patch multi-head attention: ``qkv [R, P, 3·D]`` -> ``[R, P, D]``, heads of ``head_dim`` channels."""
    check_tensor(KERNEL, "qkv", qkv, shape=(None, None, None), dtype=FLOAT_DTYPES, contiguous=False)
    rows, patch, three_width = qkv.shape
    if not 1 <= patch <= MAX_PATCH:
        raise ValueError(f"{KERNEL}: qkv has {patch} tokens per patch, expected 1..{MAX_PATCH}")
    if three_width % 3:
        raise ValueError(f"{KERNEL}: qkv has {three_width} channels, expected 3·D (q, k and v chunks)")
    width = three_width // 3
    if not isinstance(head_dim, int) or head_dim <= 0 or width % head_dim:
        raise ValueError(f"{KERNEL}: head_dim is {head_dim!r}, expected a positive divisor of D = {width}")
    if qkv.stride(2) != 1:
        raise ValueError(f"{KERNEL}: qkv has channel stride {qkv.stride(2)}, expected 1; call .contiguous() first")
    if out is None:
        out = torch.empty((rows, patch, width), dtype=qkv.dtype, device=qkv.device)
    else:
        check_tensor(KERNEL, "out", out, shape=(rows, patch, width), dtype=qkv.dtype, device=qkv.device,
                     contiguous=False)
        if out.stride(2) != 1:
            raise ValueError(f"{KERNEL}: out has channel stride {out.stride(2)}, expected 1")
    if rows == 0:
        return out
    _patch_attention_kernel[(rows, width // head_dim)](
        qkv, out, qkv.stride(0), qkv.stride(1), out.stride(0), out.stride(1), patch, width,
        head_dim ** -0.5 * math.log2(math.e),
        HEAD_DIM=head_dim, BLOCK_P=max(MIN_DOT, triton.next_power_of_2(patch)),
        BLOCK_HD=max(MIN_DOT, triton.next_power_of_2(head_dim)),
        DOT_PRECISION="ieee" if qkv.dtype == torch.float32 else None, num_warps=4)
    return out
