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

Grid: one program per tile of ``BLOCK_R`` (token, head) rows; q rows ``r = (b·T + t)·Hq + h`` come first
(``cdiv(B·T·Hq, BLOCK_R)`` tiles), then KV rows ``r = (b·T + t)·Hkv + h`` (k rotated, v copied). A tile may span
tokens and batch rows: each row gathers its own position ``lengths[b] + t`` and its cos/sin table row. ``BLOCK_R``
holds about ``TILE_ELEMENTS`` channels, so small heads (the tiny test models) need few programs. A head is handled
as pairs ``(a, b)`` rotated together: ``(i, i + D/2)`` in rotate-half form, ``(2i, 2i + 1)`` in interleaved form;
both rotate as ``(a·cos − b·sin, b·cos + a·sin)``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bitdance_rt.ops.pre_attention_contract import check_pre_attention, q_output
from bitdance_rt.reference.pre_attention import qk_norm_rope_append_reference, rope_append_interleaved_reference

REFERENCE = {"qk_norm_rope_append": qk_norm_rope_append_reference,
             "rope_append_interleaved": rope_append_interleaved_reference}

TILE_ELEMENTS = 4096  # (token, head) rows x padded channels handled by one program at most


@triton.jit
def _round_to(x, DTYPE: tl.constexpr, ROUND: tl.constexpr):
    """``x`` (float32) rounded to ``DTYPE`` and widened again when ``ROUND``; a no-op for float32."""
    if ROUND:
        return x.to(DTYPE).to(tl.float32)
    else:
        return x


@triton.jit
def _tile_rows(first_row, num_rows, num_tokens, num_heads, lengths_ptr, BLOCK_R: tl.constexpr):
    """The rows ``first_row + [0, BLOCK_R)`` of a ``[B·T·H]`` flattening: in-range mask, batch row, token, head
    (int64) and each row's position ``lengths[b] + t``."""
    r = first_row + tl.arange(0, BLOCK_R)
    row_ok = r < num_rows
    head = r % num_heads
    token = r // num_heads
    t = token % num_tokens
    batch = token // num_tokens
    pos = tl.load(lengths_ptr + batch, mask=row_ok, other=0) + t
    return row_ok, batch.to(tl.int64), t.to(tl.int64), head.to(tl.int64), pos


@triton.jit
def _table_rows(table_ptr, pos, row_ok, max_pos, table_width, cols, pair_ok, DTYPE: tl.constexpr,
                HF_ROUNDING: tl.constexpr):
    """Columns ``cols`` of table row ``pos`` for every row: ``[BLOCK_R, BLOCK_PAIRS]``, zero outside the table,
    rounded to ``DTYPE`` first when ``HF_ROUNDING`` (transformers casts the tables to the input dtype)."""
    inside = (row_ok & (pos >= 0) & (pos < max_pos))[:, None] & pair_ok[None, :]
    values = tl.load(table_ptr + pos.to(tl.int64)[:, None] * table_width + cols[None, :], mask=inside, other=0.0)
    return _round_to(values, DTYPE, HF_ROUNDING)


@triton.jit
def _rotation_tables(cos_ptr, sin_ptr, pos, row_ok, max_pos, table_width, pair, chan_a, chan_b, pair_ok,
                     DTYPE: tl.constexpr, INTERLEAVED: tl.constexpr):
    """``cos_a, cos_b, sin_a, sin_b``: the angles of each row's pairs for its halves a and b. Interleaved tables
    hold one column per pair (a and b share it); rotate-half tables one per channel."""
    HF_ROUNDING: tl.constexpr = not INTERLEAVED
    if INTERLEAVED:
        cos = _table_rows(cos_ptr, pos, row_ok, max_pos, table_width, pair, pair_ok, DTYPE, HF_ROUNDING)
        sin = _table_rows(sin_ptr, pos, row_ok, max_pos, table_width, pair, pair_ok, DTYPE, HF_ROUNDING)
        return cos, cos, sin, sin
    else:
        return (_table_rows(cos_ptr, pos, row_ok, max_pos, table_width, chan_a, pair_ok, DTYPE, HF_ROUNDING),
                _table_rows(cos_ptr, pos, row_ok, max_pos, table_width, chan_b, pair_ok, DTYPE, HF_ROUNDING),
                _table_rows(sin_ptr, pos, row_ok, max_pos, table_width, chan_a, pair_ok, DTYPE, HF_ROUNDING),
                _table_rows(sin_ptr, pos, row_ok, max_pos, table_width, chan_b, pair_ok, DTYPE, HF_ROUNDING))


@triton.jit
def _rotate_pairs(x_ptr, offs_a, offs_b, mask, w_ptr, w_a, w_b, cos_a, cos_b, sin_a, sin_b, eps,
                  HEAD_DIM: tl.constexpr, DTYPE: tl.constexpr, HAS_NORM: tl.constexpr, HF_ROUNDING: tl.constexpr):
    """Load the pairs of a [rows, pairs] tile, normalise each row (one head; HF rule) when ``HAS_NORM``, rotate.

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
        num_tokens, num_q_heads, num_kv_heads, num_q_rows, num_kv_rows, max_pos, max_len, table_width,
        num_q_tiles, eps,
        stride_qb, stride_qt, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
        HEAD_DIM: tl.constexpr, HAS_NORM: tl.constexpr, INTERLEAVED: tl.constexpr,
        BLOCK_R: tl.constexpr, BLOCK_PAIRS: tl.constexpr, BLOCK_D: tl.constexpr):
    tile = tl.program_id(0)
    DTYPE: tl.constexpr = q_out_ptr.dtype.element_ty
    HF_ROUNDING: tl.constexpr = not INTERLEAVED

    pair = tl.arange(0, BLOCK_PAIRS)
    pair_ok = pair < HEAD_DIM // 2
    if INTERLEAVED:
        chan_a = 2 * pair
        chan_b = 2 * pair + 1
    else:
        chan_a = pair
        chan_b = pair + HEAD_DIM // 2
    w_a = tl.where(pair_ok, chan_a, 0)
    w_b = tl.where(pair_ok, chan_b, 0)

    # the two branches name their values apart: Triton merges a name assigned in both, which needs equal types
    if tile < num_q_tiles:
        q_ok, q_batch, q_t, q_head, q_pos = _tile_rows(tile * BLOCK_R, num_q_rows, num_tokens, num_q_heads,
                                                       lengths_ptr, BLOCK_R)
        q_cos_a, q_cos_b, q_sin_a, q_sin_b = _rotation_tables(cos_ptr, sin_ptr, q_pos, q_ok, max_pos, table_width,
                                                              pair, chan_a, chan_b, pair_ok, DTYPE, INTERLEAVED)
        q_mask = q_ok[:, None] & pair_ok[None, :]
        q_src = q_ptr + (q_batch * stride_qb + q_t * stride_qt + q_head * stride_qh)[:, None]
        q_rot_a, q_rot_b = _rotate_pairs(q_src, chan_a[None, :], chan_b[None, :], q_mask, q_weight_ptr, w_a, w_b,
                                         q_cos_a, q_cos_b, q_sin_a, q_sin_b, eps, HEAD_DIM, DTYPE, HAS_NORM,
                                         HF_ROUNDING)
        q_dst = q_out_ptr + (((q_batch * num_q_heads + q_head) * num_tokens + q_t) * HEAD_DIM)[:, None]
        tl.store(q_dst + chan_a[None, :], q_rot_a.to(DTYPE), mask=q_mask)
        tl.store(q_dst + chan_b[None, :], q_rot_b.to(DTYPE), mask=q_mask)
    else:
        kv_ok, kv_batch, kv_t, kv_head, kv_pos = _tile_rows((tile - num_q_tiles) * BLOCK_R, num_kv_rows,
                                                            num_tokens, num_kv_heads, lengths_ptr, BLOCK_R)
        k_cos_a, k_cos_b, k_sin_a, k_sin_b = _rotation_tables(cos_ptr, sin_ptr, kv_pos, kv_ok, max_pos,
                                                              table_width, pair, chan_a, chan_b, pair_ok, DTYPE,
                                                              INTERLEAVED)
        in_cache = kv_ok & (kv_pos >= 0) & (kv_pos < max_len)
        cache_row = (((kv_batch * num_kv_heads + kv_head) * max_len + kv_pos) * HEAD_DIM)[:, None]
        k_mask = kv_ok[:, None] & pair_ok[None, :]
        k_store = in_cache[:, None] & pair_ok[None, :]
        k_src = k_ptr + (kv_batch * stride_kb + kv_t * stride_kt + kv_head * stride_kh)[:, None]
        k_rot_a, k_rot_b = _rotate_pairs(k_src, chan_a[None, :], chan_b[None, :], k_mask, k_weight_ptr, w_a, w_b,
                                         k_cos_a, k_cos_b, k_sin_a, k_sin_b, eps, HEAD_DIM, DTYPE, HAS_NORM,
                                         HF_ROUNDING)
        tl.store(k_cache_ptr + cache_row + chan_a[None, :], k_rot_a.to(DTYPE), mask=k_store)
        tl.store(k_cache_ptr + cache_row + chan_b[None, :], k_rot_b.to(DTYPE), mask=k_store)

        chan = tl.arange(0, BLOCK_D)
        chan_ok = chan < HEAD_DIM
        v_src = v_ptr + (kv_batch * stride_vb + kv_t * stride_vt + kv_head * stride_vh)[:, None] + chan[None, :]
        values = tl.load(v_src, mask=kv_ok[:, None] & chan_ok[None, :], other=0.0)
        tl.store(v_cache_ptr + cache_row + chan[None, :], values, mask=in_cache[:, None] & chan_ok[None, :])


def _num_warps(tile_elements: int) -> int:
    return 4 if tile_elements <= 2048 else 8


def _launch(kernel: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_weight: torch.Tensor | None,
            k_weight: torch.Tensor | None, eps: float, cos_table: torch.Tensor, sin_table: torch.Tensor,
            k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor, q_out: torch.Tensor | None,
            interleaved: bool) -> torch.Tensor:
    norm = None if interleaved else (q_weight, k_weight)
    shape = check_pre_attention(kernel, q, k, v, norm, eps, cos_table, sin_table, k_cache, v_cache, lengths, q_out,
                                interleaved)
    batch, length, q_heads, kv_heads, head_dim, max_pos, max_len = shape
    table_width = head_dim // 2 if interleaved else head_dim
    q_out = q_output(q, shape, q_out)
    if q_out.numel() == 0:
        return q_out

    block_d = triton.next_power_of_2(head_dim)
    q_rows, kv_rows = batch * length * q_heads, batch * length * kv_heads
    block_r = min(triton.next_power_of_2(q_rows), max(1, TILE_ELEMENTS // block_d))
    num_q_tiles = triton.cdiv(q_rows, block_r)
    grid = (num_q_tiles + triton.cdiv(kv_rows, block_r),)
    no_weight = cos_table  # any tensor: the weight pointers are unused without the norm
    _pre_attention_kernel[grid](
        q, k, v, no_weight if q_weight is None else q_weight, no_weight if k_weight is None else k_weight,
        cos_table, sin_table, k_cache, v_cache, lengths, q_out,
        length, q_heads, kv_heads, q_rows, kv_rows, max_pos, max_len, table_width, num_q_tiles, float(eps),
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        HEAD_DIM=head_dim, HAS_NORM=q_weight is not None, INTERLEAVED=interleaved,
        BLOCK_R=block_r, BLOCK_PAIRS=block_d // 2, BLOCK_D=block_d, num_warps=_num_warps(block_r * block_d))
    return q_out


def qk_norm_rope_append(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_norm_weight: torch.Tensor,
                        k_norm_weight: torch.Tensor, eps: float, cos_table: torch.Tensor, sin_table: torch.Tensor,
                        k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor,
                        q_out: torch.Tensor | None = None) -> torch.Tensor:
    """Qwen3 q/k per-head RMSNorm + rotate-half RoPE at ``lengths[b] + t``, K/V appended; returns q
    ``[B, Hq, T, D]``."""
    return _launch("qk_norm_rope_append", q, k, v, q_norm_weight, k_norm_weight, eps, cos_table, sin_table, k_cache, v_cache,
                   lengths, q_out, interleaved=False)


def rope_append_interleaved(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos_table: torch.Tensor,
                            sin_table: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            lengths: torch.Tensor, q_out: torch.Tensor | None = None) -> torch.Tensor:
    """Class-conditional interleaved-pair RoPE at ``lengths[b] + t`` (no norm), K/V appended; returns q
    ``[B, Hq, T, D]``."""
    return _launch("rope_append_interleaved", q, k, v, None, None, 0.0, cos_table, sin_table, k_cache, v_cache,
                   lengths, q_out, interleaved=True)
