"""Microbenchmarks of the CUDA extension's fused pre-attention ``qk_norm_rope_append``
(``bitdance_rt.cuda_ops.pre_attention``, bf16) beside the Triton kernel and the unfused PyTorch reference.

Rows (bench/shapes.py): the 14B backbone (40 query heads on 8 KV heads of 128 channels, 2 guidance rows) at its
decode blocks (P = 64 and 16 after 1,024 and 4,160 cached positions) and at prompt prefills of 128 and 512
tokens. q, k and v are views of one fused qkv projection ``[B, T, (40 + 2·8)·128]``, as the engine passes them.
The reference is ``reference.pre_attention``'s math over the whole batch at once (equal lengths: a slice write).
Floor from the bytes read + written by one call (q, k, v, the norm weights, the table rows used, lengths; q out,
the K and V rows written), as bench/test_bench_pre_attention.py counts them.

``extra_info`` (``floors.record_row``): graphed times of ours and every candidate, our eager time, bytes, floor,
``ours_over_floor`` and the GPU environment.
"""

from __future__ import annotations

import floors
import pytest
import torch
from shapes import T2I_14B, T2I_DECODE

from bitdance_rt.cuda_ops.pre_attention import qk_norm_rope_append
from bitdance_rt.kernels import pre_attention as triton_pre_attention
from bitdance_rt.reference.qwen3 import rms_norm_hf
from bitdance_rt.reference.rope import apply_rotate_half, rotate_half_tables

DTYPE = torch.bfloat16
ELEMENT = 2  # bytes per bf16 element
EPS = 1e-6
THETA = 1e6
T2I_PREFILL = (128, 512)  # prompt lengths (tokens) of a prefill
T2I_ROWS = 2  # guidance rows


def bytes_of_step(rows: int, tokens: int, q_heads: int, kv_heads: int, head_dim: int) -> int:
    """q, k, v read and q, K, V written; the norm weights; the cos/sin rows of the (shared) positions; lengths."""
    activations = ELEMENT * (2 * rows * tokens * q_heads * head_dim + 4 * rows * tokens * kv_heads * head_dim)
    return activations + ELEMENT * 2 * head_dim + 4 * 2 * tokens * head_dim + 4 * rows


def t2i_row(benchmark, tokens: int, cached: int) -> None:
    q_heads, kv_heads, head_dim = T2I_14B["q_heads"], T2I_14B["kv_heads"], T2I_14B["head_dim"]
    max_len = cached + tokens
    qkv = floors.cuda_randn(T2I_ROWS, tokens, (q_heads + 2 * kv_heads) * head_dim, seed=0)
    qkv = qkv.view(T2I_ROWS, tokens, q_heads + 2 * kv_heads, head_dim)
    q, k, v = qkv[:, :, :q_heads], qkv[:, :, q_heads:q_heads + kv_heads], qkv[:, :, q_heads + kv_heads:]
    k_cache = torch.zeros(T2I_ROWS, kv_heads, max_len, head_dim, device="cuda", dtype=DTYPE)
    v_cache = torch.zeros_like(k_cache)
    q_weight = 1 + 0.1 * floors.cuda_randn(head_dim, seed=3)
    k_weight = 1 + 0.1 * floors.cuda_randn(head_dim, seed=4)
    cos, sin = (t.cuda() for t in rotate_half_tables(torch.arange(max_len), head_dim, THETA))
    lengths = torch.full((T2I_ROWS,), cached, dtype=torch.int32, device="cuda")
    q_out = torch.empty(T2I_ROWS, q_heads, tokens, head_dim, device="cuda", dtype=DTYPE)
    triton_q_out = torch.empty_like(q_out)
    args = (q, k, v, q_weight, k_weight, EPS, cos, sin, k_cache, v_cache, lengths)

    def reference():
        c, s = cos[cached:max_len], sin[cached:max_len]
        q_rot = apply_rotate_half(rms_norm_hf(q, q_weight, EPS).transpose(1, 2), c, s)
        k_cache[:, :, cached:max_len] = apply_rotate_half(rms_norm_hf(k, k_weight, EPS).transpose(1, 2), c, s)
        v_cache[:, :, cached:max_len] = v.transpose(1, 2)
        return q_rot

    floors.record_row(benchmark, lambda: qk_norm_rope_append(*args, q_out=q_out),
                      {"triton": lambda: triton_pre_attention.qk_norm_rope_append(*args, q_out=triton_q_out),
                       "reference": reference},
                      bytes_moved=bytes_of_step(T2I_ROWS, tokens, q_heads, kv_heads, head_dim))


@pytest.mark.parametrize("rows,block,cached", T2I_DECODE, ids=[f"P{p}-len{n}" for _, p, n in T2I_DECODE])
def test_bench_cuda_qk_norm_rope_append_decode_t2i_14b(benchmark, rows, block, cached):
    assert rows == T2I_ROWS
    t2i_row(benchmark, block, cached)


@pytest.mark.parametrize("tokens", T2I_PREFILL)
def test_bench_cuda_qk_norm_rope_append_prefill_t2i_14b(benchmark, tokens):
    t2i_row(benchmark, tokens, 0)
