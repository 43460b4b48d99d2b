"""Block-causal patch attention over a static KV cache, for a decode block and for a padded prefill.

Shapes: keys and values ``[B, Hkv, Lmax, D]`` (the cache, contiguous), queries and output ``[B, Hq, T, D]`` with
``Hq = group · Hkv`` (query head ``h`` reads KV head ``h // group``), per-row ``lengths`` (and ``causal_lens``)
device int32 ``[B]``, so one CUDA graph serves every step and rows of different lengths share a batch. ``D`` in
{16, 32, 64, 128} (the models: 64 and 128). Dtypes: float32, bfloat16 or float16, all alike; scores,
softmax statistics and the accumulator in float32 (online softmax in base 2), one rounding at the store.

- ``block_attention_decode``: the T = P queries of row b's new block attend keys ``[0, lengths[b] + P)``: the
  cache plus the block itself (already written at ``[lengths[b], lengths[b] + P)``), bidirectionally. One program
  holds the ``group · P`` query rows of one KV head (or a tile of them) in its M dimension, so each K/V tile is
  read once for all query heads sharing it. The key range may be cut into splits (flash-decoding) whose partial
  outputs and log-sum-exps a second kernel merges; their number depends only on shapes, never on ``lengths``.
- ``block_attention_prefill``: query i of row b attends key j iff ``j < lengths[b]`` and ``j <= group_end(i)``:
  positions before ``causal_lens[b]`` are causal, later ones form blocks of ``block`` starting at
  ``causal_lens[b]``. Queries ``i >= lengths[b]`` (padding) get 0. Key tiles beyond a query tile's reach are
  skipped.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from bitdance_rt.ops.argument_checks import check_tensor
from bitdance_rt.kernels import _tiles
from bitdance_rt.reference.attention import masked_attention

REFERENCE = masked_attention  # with reference.attention.decode_allowed / prefill_allowed as the mask
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
HEAD_DIMS = (16, 32, 64, 128)  # 64 and 128 in the models, 16 in the tiny test models
LOG2_E = 1.4426950408889634
BLOCK_N = 64  # keys per tile
INTERPRETER_BLOCK_N = 256  # under Triton's interpreter: fewer, larger key tiles (kernels/_tiles.py)
PREFILL_BLOCK_M = 64
MIN_KEYS_PER_SPLIT = 128  # keys of one split at least (two key tiles)
SPLIT_WAVES = 2  # waves of programs the key splits aim for
NUM_STAGES = 2  # double-buffered K/V tiles: float32 tiles of 128-channel heads fit shared memory


@triton.jit
def _decode_kernel(q_ptr, k_ptr, v_ptr, lengths_ptr, out_ptr, part_ptr, lse_ptr, qk_scale, num_kv_heads, max_len,
                   block, num_splits, rows_total,
                   GROUP_ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   SPLIT: tl.constexpr, DOT_PRECISION: tl.constexpr):
    # program: one (row b, KV head) pair, one tile of its group·P query rows, one split of the key range. The row's
    # keys [0, end) are cut into num_splits tile-aligned ranges from its length on the device, so a captured graph
    # (sized for Lmax) still shares a short row's keys among all its splits
    pid_bh = tl.program_id(0).to(tl.int64)
    pid_m = tl.program_id(1)
    pid_s = tl.program_id(2)
    b = pid_bh // num_kv_heads
    end = tl.minimum(tl.load(lengths_ptr + b) + block, max_len)
    keys_per_split = tl.cdiv(tl.cdiv(end, BLOCK_N), num_splits) * BLOCK_N
    lo = pid_s * keys_per_split
    hi = tl.minimum(lo + keys_per_split, end)

    # the group·P query rows of one KV head are contiguous in [B, Hq, P, D]
    rows = pid_bh * GROUP_ROWS + pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = pid_m * BLOCK_M + tl.arange(0, BLOCK_M) < GROUP_ROWS
    dims = tl.arange(0, HEAD_DIM)
    q = tl.load(q_ptr + rows[:, None] * HEAD_DIM + dims[None, :], mask=row_ok[:, None], other=0.0)
    kv_base = pid_bh * max_len * HEAD_DIM

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for start in range(lo, hi, BLOCK_N):  # every tile holds at least one key < end: m_new stays finite
        keys = start + tl.arange(0, BLOCK_N)
        key_ok = keys < hi
        k_t = tl.load(k_ptr + kv_base + keys[None, :] * HEAD_DIM + dims[:, None], mask=key_ok[None, :], other=0.0)
        s = tl.dot(q, k_t, input_precision=DOT_PRECISION) * qk_scale
        s = tl.where(key_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_ptr + kv_base + keys[:, None] * HEAD_DIM + dims[None, :], mask=key_ok[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    if SPLIT:  # an empty split stores 0 with log-sum-exp -inf: the merge gives it weight 0
        l_safe = tl.where(l_i > 0, l_i, 1.0)
        tl.store(part_ptr + (pid_s * rows_total + rows)[:, None] * HEAD_DIM + dims[None, :],
                 acc / l_safe[:, None], mask=row_ok[:, None])
        tl.store(lse_ptr + pid_s * rows_total + rows, tl.where(l_i > 0, m_i + tl.log2(l_safe), float("-inf")),
                 mask=row_ok)
    else:
        tl.store(out_ptr + rows[:, None] * HEAD_DIM + dims[None, :], (acc / l_i[:, None]).to(out_ptr.dtype.element_ty),
                 mask=row_ok[:, None])


@triton.jit
def _merge_splits_kernel(part_ptr, lse_ptr, out_ptr, rows_total, num_splits,
                         HEAD_DIM: tl.constexpr, BLOCK_R: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < rows_total
    dims = tl.arange(0, HEAD_DIM)
    lse_max = tl.full([BLOCK_R], float("-inf"), tl.float32)
    for s in range(num_splits):
        lse_max = tl.maximum(lse_max, tl.load(lse_ptr + s * rows_total + rows, mask=row_ok, other=0.0))
    acc = tl.zeros([BLOCK_R, HEAD_DIM], tl.float32)
    weight_sum = tl.zeros([BLOCK_R], tl.float32)
    for s in range(num_splits):
        weight = tl.exp2(tl.load(lse_ptr + s * rows_total + rows, mask=row_ok, other=0.0) - lse_max)
        part = tl.load(part_ptr + (s * rows_total + rows)[:, None] * HEAD_DIM + dims[None, :], mask=row_ok[:, None],
                       other=0.0)
        acc += weight[:, None] * part
        weight_sum += weight
    out = acc / weight_sum[:, None]
    tl.store(out_ptr + rows[:, None] * HEAD_DIM + dims[None, :], out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _group_end(pos, causal_len, block):
    """Last key position that query ``pos`` may see (before the length cut)."""
    return tl.where(pos < causal_len, pos, causal_len + (pos - causal_len) // block * block + block - 1)


@triton.jit
def _prefill_kernel(q_ptr, k_ptr, v_ptr, lengths_ptr, causal_lens_ptr, out_ptr, qk_scale, num_q_heads, group,
                    num_queries, max_len, block,
                    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    DOT_PRECISION: tl.constexpr):
    # program: one tile of query positions of one (row b, query head h) pair
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    b = pid_bh // num_q_heads
    kv_head = b * (num_q_heads // group) + pid_bh % num_q_heads // group
    length = tl.minimum(tl.load(lengths_ptr + b), num_queries)
    causal_len = tl.load(causal_lens_ptr + b)

    first = pid_m * BLOCK_M
    pos = first + tl.arange(0, BLOCK_M)
    row_ok = pos < length
    group_end = _group_end(pos, causal_len, block)
    # group_end grows with pos: the tile's last valid query reaches furthest; an all-padding tile reads nothing
    last = tl.minimum(first + BLOCK_M, length) - 1
    hi = tl.where(first < length, tl.minimum(_group_end(last, causal_len, block) + 1, length), 0)

    dims = tl.arange(0, HEAD_DIM)
    q_rows = pid_bh * num_queries + pos
    q = tl.load(q_ptr + q_rows[:, None] * HEAD_DIM + dims[None, :], mask=row_ok[:, None], other=0.0)
    kv_base = kv_head * max_len * HEAD_DIM

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for start in range(0, hi, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        key_ok = keys < hi
        k_t = tl.load(k_ptr + kv_base + keys[None, :] * HEAD_DIM + dims[:, None], mask=key_ok[None, :], other=0.0)
        s = tl.dot(q, k_t, input_precision=DOT_PRECISION) * qk_scale
        allowed = row_ok[:, None] & key_ok[None, :] & (keys[None, :] <= group_end[:, None])
        s = tl.where(allowed, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing allowed yet: p = 0, no NaN
        alpha = tl.exp2(m_i - m_use)
        p = tl.exp2(s - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_ptr + kv_base + keys[:, None] * HEAD_DIM + dims[None, :], mask=key_ok[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    out = tl.where(l_i[:, None] > 0, acc / tl.where(l_i > 0, l_i, 1.0)[:, None], 0.0)
    tl.store(out_ptr + q_rows[:, None] * HEAD_DIM + dims[None, :], out.to(out_ptr.dtype.element_ty),
             mask=(pos < num_queries)[:, None])


def _check_common(kernel: str, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor,
                  scale: float, out: torch.Tensor | None) -> tuple[int, int, int]:
    """Checks shared by both launchers; returns (group, Lmax, D)."""
    check_tensor(kernel, "q", q, shape=(None, None, None, None), dtype=FLOAT_DTYPES)
    batch, q_heads, _, head_dim = q.shape
    if q.numel() == 0:
        raise ValueError(f"{kernel}: q has shape {list(q.shape)}; every dimension must be at least 1")
    check_tensor(kernel, "k_cache", k_cache, shape=(batch, None, None, head_dim), dtype=q.dtype, device=q.device)
    check_tensor(kernel, "v_cache", v_cache, shape=tuple(k_cache.shape), dtype=q.dtype, device=q.device)
    check_tensor(kernel, "lengths", lengths, shape=(batch,), dtype=torch.int32, device=q.device)
    if out is not None:
        check_tensor(kernel, "out", out, shape=tuple(q.shape), dtype=q.dtype, device=q.device)
    kv_heads = k_cache.shape[1]
    if kv_heads == 0 or q_heads % kv_heads:
        raise ValueError(f"{kernel}: q has {q_heads} heads, not a multiple of the cache's {kv_heads} KV heads")
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"{kernel}: head dim {head_dim} is not supported; expected one of {HEAD_DIMS}")
    if not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"{kernel}: scale must be a positive finite Python number, got {scale!r}")
    return q_heads // kv_heads, k_cache.shape[2], head_dim


def _dot_precision(dtype: torch.dtype) -> str:
    """float32 products in full precision (tf32 would miss the 1e-5 bar); 16-bit inputs use the tensor cores."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _launch_shape(head_dim: int) -> dict[str, int]:
    return {"num_warps": 8 if head_dim > 64 else 4, "num_stages": NUM_STAGES}


def _key_tile() -> int:
    """Keys per tile: ``BLOCK_N``, or ``INTERPRETER_BLOCK_N`` under Triton's interpreter (``_tiles``)."""
    return INTERPRETER_BLOCK_N if _tiles.interpreter_tiles() else BLOCK_N


def choose_key_splits(programs: int, max_len: int, sm_count: int) -> int:
    """Key-range splits for ``programs`` (batch·KV heads·row tiles) decode programs over a cache of ``max_len``
    positions on ``sm_count`` multiprocessors: enough programs for ``SPLIT_WAVES`` waves (a few rows leave most
    multiprocessors idle otherwise), each split at least ``MIN_KEYS_PER_SPLIT`` keys of a full cache; 1 when the rows
    alone fill the waves (batch 256) or the cache is short. The kernel cuts each row's own key range (its length,
    read on the device) into that many tile-aligned parts, so at an early AR step the splits share the few keys
    there are instead of most of them finding none."""
    wanted = -(-SPLIT_WAVES * sm_count // max(1, programs))
    return max(1, min(wanted, max_len // MIN_KEYS_PER_SPLIT))


def _key_splits(programs: int, max_len: int, device: torch.device) -> int:
    """``choose_key_splits`` with the GPU's multiprocessor count; 1 on the CPU interpreter."""
    if device.type != "cuda":
        return 1
    return choose_key_splits(programs, max_len, torch.cuda.get_device_properties(device).multi_processor_count)


def block_attention_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor,
                           scale: float, out: torch.Tensor | None = None, *,
                           key_splits: int | None = None) -> torch.Tensor:
    """Attention of the P new queries ``q [B, Hq, P, D]`` of each row over cache keys ``[0, lengths[b] + P)``.

    ``lengths[b]`` counts the positions cached before the block; ``lengths[b] + P`` must not exceed ``Lmax``
    (the kernel cuts the key range at ``Lmax``). ``key_splits`` overrides the number of key-range splits
    (default: from the GPU's multiprocessor count and the shapes; 1 without CUDA).
    """
    kernel = "block_attention_decode"
    group, max_len, head_dim = _check_common(kernel, q, k_cache, v_cache, lengths, scale, out)
    batch, q_heads, block, _ = q.shape
    if block < 1 or block > max_len:
        raise ValueError(f"{kernel}: q holds a block of {block} queries; expected 1 to Lmax = {max_len}")
    if out is None:
        out = torch.empty_like(q)
    group_rows = group * block
    max_block_m = 64 if q.dtype == torch.float32 else 128
    block_m = min(max_block_m, max(16, triton.next_power_of_2(group_rows)))
    bh = batch * k_cache.shape[1]
    m_tiles = triton.cdiv(group_rows, block_m)
    if key_splits is None:
        key_splits = _key_splits(bh * m_tiles, max_len, q.device)
    if not isinstance(key_splits, int) or key_splits < 1:
        raise ValueError(f"{kernel}: key_splits must be a positive int, got {key_splits!r}")
    block_n = _key_tile()
    key_splits = min(key_splits, triton.cdiv(max_len, block_n))  # at most one key tile per split
    rows_total = batch * q_heads * block
    split = key_splits > 1
    part = torch.empty((key_splits, rows_total, head_dim) if split else (1,), device=q.device, dtype=torch.float32)
    lse = torch.empty((key_splits, rows_total) if split else (1,), device=q.device, dtype=torch.float32)
    _decode_kernel[(bh, m_tiles, key_splits)](
        q, k_cache, v_cache, lengths, out, part, lse, scale * LOG2_E, k_cache.shape[1], max_len, block,
        key_splits, rows_total, GROUP_ROWS=group_rows, HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n,
        SPLIT=split, DOT_PRECISION=_dot_precision(q.dtype), **_launch_shape(head_dim))
    if split:
        block_r = 16
        _merge_splits_kernel[(triton.cdiv(rows_total, block_r),)](
            part, lse, out, rows_total, key_splits, HEAD_DIM=head_dim, BLOCK_R=block_r, num_warps=4)
    return out


def block_attention_prefill(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor,
                            causal_lens: torch.Tensor, block: int, scale: float,
                            out: torch.Tensor | None = None) -> torch.Tensor:
    """Block-causal attention of the padded queries ``q [B, Hq, T, D]`` over the cache's first ``T`` positions.

    Row b's valid tokens are ``[0, lengths[b])``; causal before ``causal_lens[b]``, then blocks of ``block``.
    Padding queries (``>= lengths[b]``) get 0; ``lengths[b]`` beyond ``T`` count as ``T``.
    """
    kernel = "block_attention_prefill"
    group, max_len, head_dim = _check_common(kernel, q, k_cache, v_cache, lengths, scale, out)
    check_tensor(kernel, "causal_lens", causal_lens, shape=(q.shape[0],), dtype=torch.int32, device=q.device)
    batch, q_heads, num_queries, _ = q.shape
    if num_queries > max_len:
        raise ValueError(f"{kernel}: q holds {num_queries} positions but the cache only {max_len} (Lmax)")
    if not isinstance(block, int) or block < 1:
        raise ValueError(f"{kernel}: block must be a positive int, got {block!r}")
    if out is None:
        out = torch.empty_like(q)
    _prefill_kernel[(triton.cdiv(num_queries, PREFILL_BLOCK_M), batch * q_heads)](
        q, k_cache, v_cache, lengths, causal_lens, out, scale * LOG2_E, q_heads, group, num_queries, max_len, block,
        HEAD_DIM=head_dim, BLOCK_M=PREFILL_BLOCK_M, BLOCK_N=_key_tile(), DOT_PRECISION=_dot_precision(q.dtype),
        **_launch_shape(head_dim))
    return out
