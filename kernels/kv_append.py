"""Fused pre-attention step: RoPE on q and k (text-to-image: per-head RMSNorm first), K and V appended to the
static KV cache, q written in the attention kernel's layout; one launch for all of it.

* :func:`qk_norm_rope_append` (Qwen3): per head, RMSNorm by the HF rule (normalise in float32, cast to the input
  dtype, times the weight), then rotate-half RoPE with tables ``[max_pos, D]`` (``rope.rotate_half_tables``) whose
  products and sum are rounded to the input dtype as transformers does.
* :func:`rope_append_interleaved` (class-conditional): interleaved-pair RoPE in float32 with tables
  ``[max_pos, D/2]`` in generation order (``rope.c2i_rope_tables``), one rounding at the end.

Inputs: q ``[B, T, Hq, D]``, k and v ``[B, T, Hkv, D]`` (float32, bfloat16 or float16; views such as a chunk of a
fused qkv projection are fine as long as the channel dim has stride 1), caches ``[B, Hkv, Lmax, D]`` contiguous,
``lengths`` int32 ``[B]`` on the device: row b's token t sits at position ``lengths[b] + t``. The caller keeps
``lengths[b] + T`` within the tables and the cache (the lengths stay on the device, so they are not checked here):
positions outside the cache are not written, and outside the tables q and k come out as zeros.
Output: q ``[B, Hq, T, D]`` in q's dtype; the caches receive rows ``[lengths[b], lengths[b] + T)`` and nothing
else.

Grid: one program per (token, block of heads); the first ``cdiv(Hq, BLOCK_HQ)`` head blocks are q heads, the rest
blocks of KV heads (k rotated, v copied). A head is handled as pairs ``(a, b)`` rotated together: ``(i, i + D/2)``
in rotate-half form, ``(2i, 2i + 1)`` in interleaved form; both rotate as ``(a·cos − b·sin, b·cos + a·sin)``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bitdance_rt.kernels._checks import check_tensor
from bitdance_rt.reference.pre_attention import qk_norm_rope_append_reference, rope_append_interleaved_reference

REFERENCE = {"qk_norm_rope_append": qk_norm_rope_append_reference,
             "rope_append_interleaved": rope_append_interleaved_reference}

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
TILE_ELEMENTS = 2048  # heads x channels handled by one program at most


@triton.jit
def _round_to(x, DTYPE: tl.constexpr, ROUND: tl.constexpr):
    """``x`` (float32) rounded to ``DTYPE`` and widened again when ``ROUND``; a no-op for float32."""
    if ROUND:
        return x.to(DTYPE).to(tl.float32)
    else:
        return x


@triton.jit
def _rotate_pairs(x_ptr, offs_a, offs_b, mask, w_ptr, w_a, w_b, cos_a, cos_b, sin_a, sin_b, eps,
                  HEAD_DIM: tl.constexpr, DTYPE: tl.constexpr, HAS_NORM: tl.constexpr, HF_ROUNDING: tl.constexpr):
    """Load the pairs of a [heads, pairs] tile, normalise each head (HF rule) when ``HAS_NORM``, rotate.

    Returns the rotated halves (float32, already rounded as the reference rounds them)."""
    a = tl.load(x_ptr + offs_a, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(x_ptr + offs_b, mask=mask, other=0.0).to(tl.float32)
    if HAS_NORM:
        mean_square = (tl.sum(a * a, axis=1) + tl.sum(b * b, axis=1)) / HEAD_DIM
        inv_rms = tl.rsqrt(mean_square + eps)[:, None]
        weight_a = tl.load(w_ptr + w_a).to(tl.float32)[None, :]
        weight_b = tl.load(w_ptr + w_b).to(tl.float32)[None, :]
        a = _round_to(weight_a * _round_to(a * inv_rms, DTYPE, True), DTYPE, True)
        b = _round_to(weight_b * _round_to(b * inv_rms, DTYPE, True), DTYPE, True)
    rot_a = _round_to(_round_to(a * cos_a, DTYPE, HF_ROUNDING) - _round_to(b * sin_a, DTYPE, HF_ROUNDING),
                      DTYPE, HF_ROUNDING)
    rot_b = _round_to(_round_to(b * cos_b, DTYPE, HF_ROUNDING) + _round_to(a * sin_b, DTYPE, HF_ROUNDING),
                      DTYPE, HF_ROUNDING)
    return rot_a, rot_b


@triton.jit
def _pre_attention_kernel(
        q_ptr, k_ptr, v_ptr, q_weight_ptr, k_weight_ptr, cos_ptr, sin_ptr, k_cache_ptr, v_cache_ptr, lengths_ptr,
        q_out_ptr,
        num_tokens, num_q_heads, num_kv_heads, max_pos, max_len, table_width, num_q_blocks, eps,
        stride_qb, stride_qt, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
        HEAD_DIM: tl.constexpr, HAS_NORM: tl.constexpr, INTERLEAVED: tl.constexpr,
        BLOCK_HQ: tl.constexpr, BLOCK_HKV: tl.constexpr, BLOCK_PAIRS: tl.constexpr, BLOCK_D: tl.constexpr):
    token = tl.program_id(0)
    head_block = tl.program_id(1)
    row = (token // num_tokens).to(tl.int64)
    t = token % num_tokens
    pos = tl.load(lengths_ptr + row) + t
    DTYPE: tl.constexpr = q_out_ptr.dtype.element_ty
    HF_ROUNDING: tl.constexpr = not INTERLEAVED

    pair = tl.arange(0, BLOCK_PAIRS)
    pair_ok = pair < HEAD_DIM // 2
    if INTERLEAVED:
        chan_a = 2 * pair
        chan_b = 2 * pair + 1
        table_a = pair
        table_b = pair
    else:
        chan_a = pair
        chan_b = pair + HEAD_DIM // 2
        table_a = chan_a
        table_b = chan_b
    # a scalar condition is broadcast before it meets a block (Triton's interpreter mishandles scalar & block)
    pos_of_pair = pos + tl.zeros_like(pair)
    table_ok = pair_ok & (pos_of_pair >= 0) & (pos_of_pair < max_pos)
    table_row = pos.to(tl.int64) * table_width
    cos_a = tl.load(cos_ptr + table_row + table_a, mask=table_ok, other=0.0)
    cos_b = tl.load(cos_ptr + table_row + table_b, mask=table_ok, other=0.0)
    sin_a = tl.load(sin_ptr + table_row + table_a, mask=table_ok, other=0.0)
    sin_b = tl.load(sin_ptr + table_row + table_b, mask=table_ok, other=0.0)
    # transformers casts the tables to the input dtype before the products
    cos_a = _round_to(cos_a, DTYPE, HF_ROUNDING)[None, :]
    cos_b = _round_to(cos_b, DTYPE, HF_ROUNDING)[None, :]
    sin_a = _round_to(sin_a, DTYPE, HF_ROUNDING)[None, :]
    sin_b = _round_to(sin_b, DTYPE, HF_ROUNDING)[None, :]
    w_a = tl.where(pair_ok, chan_a, 0)
    w_b = tl.where(pair_ok, chan_b, 0)

    # the two branches name their values apart: Triton merges a name assigned in both, which needs equal types
    if head_block < num_q_blocks:
        q_head = head_block * BLOCK_HQ + tl.arange(0, BLOCK_HQ)
        q_mask = (q_head < num_q_heads)[:, None] & pair_ok[None, :]
        q_src = q_ptr + row * stride_qb + t * stride_qt + q_head[:, None].to(tl.int64) * stride_qh
        q_a, q_b = _rotate_pairs(q_src, chan_a[None, :], chan_b[None, :], q_mask, q_weight_ptr, w_a, w_b,
                                 cos_a, cos_b, sin_a, sin_b, eps, HEAD_DIM, DTYPE, HAS_NORM, HF_ROUNDING)
        q_dst = q_out_ptr + ((row * num_q_heads + q_head[:, None]) * num_tokens + t) * HEAD_DIM
        tl.store(q_dst + chan_a[None, :], q_a.to(DTYPE), mask=q_mask)
        tl.store(q_dst + chan_b[None, :], q_b.to(DTYPE), mask=q_mask)
    else:
        kv_head = (head_block - num_q_blocks) * BLOCK_HKV + tl.arange(0, BLOCK_HKV)
        kv_ok = (kv_head < num_kv_heads)[:, None]
        cache_row = ((row * num_kv_heads + kv_head[:, None]) * max_len + pos) * HEAD_DIM
        k_mask = kv_ok & pair_ok[None, :]
        k_store = k_mask & ((pos_of_pair >= 0) & (pos_of_pair < max_len))[None, :]
        k_src = k_ptr + row * stride_kb + t * stride_kt + kv_head[:, None].to(tl.int64) * stride_kh
        k_a, k_b = _rotate_pairs(k_src, chan_a[None, :], chan_b[None, :], k_mask, k_weight_ptr, w_a, w_b,
                                 cos_a, cos_b, sin_a, sin_b, eps, HEAD_DIM, DTYPE, HAS_NORM, HF_ROUNDING)
        tl.store(k_cache_ptr + cache_row + chan_a[None, :], k_a.to(DTYPE), mask=k_store)
        tl.store(k_cache_ptr + cache_row + chan_b[None, :], k_b.to(DTYPE), mask=k_store)

        chan = tl.arange(0, BLOCK_D)
        pos_of_chan = pos + tl.zeros_like(chan)
        v_mask = kv_ok & (chan < HEAD_DIM)[None, :]
        v_store = v_mask & ((pos_of_chan >= 0) & (pos_of_chan < max_len))[None, :]
        v_src = v_ptr + row * stride_vb + t * stride_vt + kv_head[:, None].to(tl.int64) * stride_vh + chan[None, :]
        values = tl.load(v_src, mask=v_mask, other=0.0)
        tl.store(v_cache_ptr + cache_row + chan[None, :], values, mask=v_store)


def _check_channel_stride(kernel: str, name: str, t: torch.Tensor) -> None:
    if t.stride(-1) != 1:
        raise ValueError(f"{kernel}: {name} must have stride 1 in its last (channel) dim, found strides "
                         f"{tuple(t.stride())}; call .contiguous() first")


def _launch(kernel: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_weight: torch.Tensor | None,
            k_weight: torch.Tensor | None, eps: float, cos_table: torch.Tensor, sin_table: torch.Tensor,
            k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor, q_out: torch.Tensor | None,
            interleaved: bool) -> torch.Tensor:
    check_tensor(kernel, "q", q, shape=(None, None, None, None), dtype=FLOAT_DTYPES, contiguous=False)
    batch, length, q_heads, head_dim = q.shape
    dtype, device = q.dtype, q.device
    check_tensor(kernel, "k", k, shape=(batch, length, None, head_dim), dtype=dtype, device=device,
                 contiguous=False)
    kv_heads = k.shape[2]
    check_tensor(kernel, "v", v, shape=(batch, length, kv_heads, head_dim), dtype=dtype, device=device,
                 contiguous=False)
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_channel_stride(kernel, name, t)
    if head_dim % 2:
        raise ValueError(f"{kernel}: head dim D = {head_dim} must be even for RoPE")
    if kv_heads == 0 or q_heads % kv_heads:
        raise ValueError(f"{kernel}: q has {q_heads} heads, k and v {kv_heads}; expected a divisor of {q_heads}")
    table_width = head_dim // 2 if interleaved else head_dim
    check_tensor(kernel, "cos_table", cos_table, shape=(None, table_width), dtype=torch.float32, device=device)
    max_pos = cos_table.shape[0]
    check_tensor(kernel, "sin_table", sin_table, shape=(max_pos, table_width), dtype=torch.float32, device=device)
    check_tensor(kernel, "k_cache", k_cache, shape=(batch, kv_heads, None, head_dim), dtype=dtype, device=device)
    max_len = k_cache.shape[2]
    check_tensor(kernel, "v_cache", v_cache, shape=(batch, kv_heads, max_len, head_dim), dtype=dtype,
                 device=device)
    check_tensor(kernel, "lengths", lengths, shape=(batch,), dtype=torch.int32, device=device)
    if q_weight is not None:
        check_tensor(kernel, "q_norm_weight", q_weight, shape=(head_dim,), dtype=dtype, device=device)
        check_tensor(kernel, "k_norm_weight", k_weight, shape=(head_dim,), dtype=dtype, device=device)
        if not eps > 0:
            raise ValueError(f"{kernel}: eps must be a positive number, found {eps!r}")
    if q_out is None:
        q_out = torch.empty(batch, q_heads, length, head_dim, dtype=dtype, device=device)
    else:
        check_tensor(kernel, "q_out", q_out, shape=(batch, q_heads, length, head_dim), dtype=dtype, device=device)
    if q_out.numel() == 0:
        return q_out

    block_d = triton.next_power_of_2(head_dim)
    head_cap = max(1, TILE_ELEMENTS // block_d)
    block_hq = min(triton.next_power_of_2(q_heads), head_cap)
    block_hkv = min(triton.next_power_of_2(kv_heads), head_cap)
    num_q_blocks = triton.cdiv(q_heads, block_hq)
    grid = (batch * length, num_q_blocks + triton.cdiv(kv_heads, block_hkv))
    no_weight = cos_table  # any tensor: the weight pointers are unused without the norm
    _pre_attention_kernel[grid](
        q, k, v, no_weight if q_weight is None else q_weight, no_weight if k_weight is None else k_weight,
        cos_table, sin_table, k_cache, v_cache, lengths, q_out,
        length, q_heads, kv_heads, max_pos, max_len, table_width, num_q_blocks, float(eps),
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        HEAD_DIM=head_dim, HAS_NORM=q_weight is not None, INTERLEAVED=interleaved,
        BLOCK_HQ=block_hq, BLOCK_HKV=block_hkv, BLOCK_PAIRS=block_d // 2, BLOCK_D=block_d, num_warps=4)
    return q_out


def qk_norm_rope_append(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_norm_weight: torch.Tensor,
                        k_norm_weight: torch.Tensor, eps: float, cos_table: torch.Tensor, sin_table: torch.Tensor,
                        k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor,
                        q_out: torch.Tensor | None = None) -> torch.Tensor:
    """Qwen3 q/k per-head RMSNorm + rotate-half RoPE at ``lengths[b] + t``, K/V appended; returns q
    ``[B, Hq, T, D]``."""
    kernel = "qk_norm_rope_append"
    for name, weight in (("q_norm_weight", q_norm_weight), ("k_norm_weight", k_norm_weight)):
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"{kernel}: {name} must be a torch.Tensor, got {type(weight).__name__}")
    return _launch(kernel, q, k, v, q_norm_weight, k_norm_weight, eps, cos_table, sin_table, k_cache, v_cache,
                   lengths, q_out, interleaved=False)


def rope_append_interleaved(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos_table: torch.Tensor,
                            sin_table: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            lengths: torch.Tensor, q_out: torch.Tensor | None = None) -> torch.Tensor:
    """Class-conditional interleaved-pair RoPE at ``lengths[b] + t`` (no norm), K/V appended; returns q
    ``[B, Hq, T, D]``."""
    return _launch("rope_append_interleaved", q, k, v, None, None, 0.0, cos_table, sin_table, k_cache, v_cache,
                   lengths, q_out, interleaved=True)
