"""Microbenchmarks of the fused pre-attention kernels (bf16 on a CUDA GPU) beside the unfused PyTorch reference
on the same inputs.

Rows (bench/shapes.py): the 14B backbone (40 query heads on 8 KV heads of 128 channels, 2 guidance rows) at its
decode blocks (P = 64 and 16 after 1,024 and 4,160 cached positions) and at prompt prefills of 128 and 512 tokens
(``qk_norm_rope_append``); the class-conditional B/L/H models at 512 rows (64-channel heads, MHA) at their decode
blocks P = 1, 4, 16 and their prefix prefill of 64 + P − 1 tokens (``rope_append_interleaved``).

The reference is ``reference.pre_attention``'s math over the whole batch at once (equal lengths, so a slice write:
what an unfused PyTorch step does). ``extra_info`` holds CUDA-event times of back-to-back calls (GPU time) of ours
(``ours_s``) and the reference (``reference_s``), the bytes read + written by one call (q, k, v, the norm weights,
the table rows used; q out, the K and V rows written), its memory floor (``floors.floor_seconds``: ``floor_s``),
``ours_over_floor`` and the GPU environment. pytest-benchmark times ours, each round synchronised.
"""

from __future__ import annotations


import floors
import pytest
import torch
from shapes import C2I_PARALLEL, C2I_PREFIX, C2I_ROWS, C2I_SIZES, C2I_TOKENS, T2I_14B, T2I_DECODE

from bitdance_rt.kernels.pre_attention import qk_norm_rope_append, rope_append_interleaved
from bitdance_rt.reference.qwen3 import rms_norm_hf
from bitdance_rt.reference.rope import apply_interleaved, apply_rotate_half, c2i_rope_tables, rotate_half_tables

DTYPE = torch.bfloat16
ELEMENT = 2  # bytes per bf16 element
EPS = 1e-6
THETA = 1e6
T2I_PREFILL = (128, 512)  # prompt lengths (tokens) of a prefill, 2 guidance rows
T2I_ROWS = 2






def bytes_of_step(rows: int, tokens: int, q_heads: int, kv_heads: int, head_dim: int, table_width: int,
                  norm: bool) -> int:
    """q, k, v read and q, K, V written; the norm weights; the cos/sin rows of the (shared) positions; lengths."""
    activations = ELEMENT * (2 * rows * tokens * q_heads * head_dim + 4 * rows * tokens * kv_heads * head_dim)
    weights = ELEMENT * 2 * head_dim if norm else 0
    return activations + weights + 4 * 2 * tokens * table_width + 4 * rows


def inputs(rows: int, tokens: int, q_heads: int, kv_heads: int, head_dim: int, max_len: int):
    q = floors.cuda_randn(rows, tokens, q_heads, head_dim, seed=0)
    k = floors.cuda_randn(rows, tokens, kv_heads, head_dim, seed=1)
    v = floors.cuda_randn(rows, tokens, kv_heads, head_dim, seed=2)
    k_cache = torch.zeros(rows, kv_heads, max_len, head_dim, device="cuda", dtype=DTYPE)
    v_cache = torch.zeros_like(k_cache)
    return q, k, v, k_cache, v_cache


def t2i_row(benchmark, tokens: int, cached: int) -> None:
    q_heads, kv_heads, head_dim = T2I_14B["q_heads"], T2I_14B["kv_heads"], T2I_14B["head_dim"]
    max_len = cached + tokens
    q, k, v, k_cache, v_cache = inputs(T2I_ROWS, tokens, q_heads, kv_heads, head_dim, max_len)
    q_weight, k_weight = 1 + 0.1 * floors.cuda_randn(head_dim, seed=3), 1 + 0.1 * floors.cuda_randn(head_dim, seed=4)
    cos, sin = (t.cuda() for t in rotate_half_tables(torch.arange(max_len), head_dim, THETA))
    lengths = torch.full((T2I_ROWS,), cached, dtype=torch.int32, device="cuda")
    q_out = torch.empty(T2I_ROWS, q_heads, tokens, head_dim, device="cuda", dtype=DTYPE)

    def ours():
        qk_norm_rope_append(q, k, v, q_weight, k_weight, EPS, cos, sin, k_cache, v_cache, lengths, q_out=q_out)

    def reference():
        c, s = cos[cached:max_len], sin[cached:max_len]
        q_rot = apply_rotate_half(rms_norm_hf(q, q_weight, EPS).transpose(1, 2), c, s)
        k_cache[:, :, cached:max_len] = apply_rotate_half(rms_norm_hf(k, k_weight, EPS).transpose(1, 2), c, s)
        v_cache[:, :, cached:max_len] = v.transpose(1, 2)
        return q_rot

    record(benchmark, ours, reference, bytes_of_step(T2I_ROWS, tokens, q_heads, kv_heads, head_dim, head_dim, True))


@pytest.mark.parametrize("rows,block,cached", T2I_DECODE, ids=[f"P{p}-len{n}" for _, p, n in T2I_DECODE])
def test_bench_qk_norm_rope_append_decode_t2i_14b(benchmark, rows, block, cached):
    assert rows == T2I_ROWS
    t2i_row(benchmark, block, cached)


@pytest.mark.parametrize("tokens", T2I_PREFILL)
def test_bench_qk_norm_rope_append_prefill_t2i_14b(benchmark, tokens):
    t2i_row(benchmark, tokens, 0)


def c2i_row(benchmark, size: str, block: int, tokens: int, cached: int) -> None:
    dim, heads, _ = C2I_SIZES[size]
    head_dim = dim // heads
    prefix = C2I_PREFIX + block - 1
    max_len = prefix + C2I_TOKENS
    # the model's fused wqkv output, chunked: q, k, v are strided views as in the backbone
    fused = floors.cuda_randn(C2I_ROWS, tokens, 3 * dim, seed=5)
    q, k, v = (z.view(C2I_ROWS, tokens, heads, head_dim) for z in fused.chunk(3, dim=-1))
    _, _, _, k_cache, v_cache = inputs(C2I_ROWS, 1, heads, heads, head_dim, max_len)
    cos, sin = (t.cuda() for t in c2i_rope_tables(16, head_dim, prefix, int(round(block ** 0.5))))
    lengths = torch.full((C2I_ROWS,), cached, dtype=torch.int32, device="cuda")
    q_out = torch.empty(C2I_ROWS, heads, tokens, head_dim, device="cuda", dtype=DTYPE)

    def ours():
        rope_append_interleaved(q, k, v, cos, sin, k_cache, v_cache, lengths, q_out=q_out)

    def reference():
        end = cached + tokens
        c, s = cos[cached:end], sin[cached:end]
        k_cache[:, :, cached:end] = apply_interleaved(k, c, s).transpose(1, 2)
        v_cache[:, :, cached:end] = v.transpose(1, 2)
        return apply_interleaved(q, c, s).transpose(1, 2)

    record(benchmark, ours, reference, bytes_of_step(C2I_ROWS, tokens, heads, heads, head_dim, head_dim // 2, False))


@pytest.mark.parametrize("block", C2I_PARALLEL)
@pytest.mark.parametrize("size", sorted(C2I_SIZES))
def test_bench_rope_append_interleaved_decode_c2i(benchmark, size, block):
    # the last AR step: P new tokens after the prefix and all but the last two blocks of image tokens
    cached = C2I_PREFIX + block - 1 + C2I_TOKENS - 2 * block
    c2i_row(benchmark, size, block, block, cached)


@pytest.mark.parametrize("block", C2I_PARALLEL)
@pytest.mark.parametrize("size", sorted(C2I_SIZES))
def test_bench_rope_append_interleaved_prefill_c2i(benchmark, size, block):
    c2i_row(benchmark, size, block, C2I_PREFIX + block - 1, 0)


def record(benchmark, ours, reference, bytes_moved: float) -> None:
    floors.record_row(benchmark, ours, {"reference": reference}, bytes_moved)
