"""Decode-block attention over a static bf16 KV cache: our kernel against the PyTorch reference (dense mask),
``scaled_dot_product_attention`` with the same bool mask, and flash-attn's ``flash_attn_with_kvcache`` when installed.

Rows: the 14B backbone's decode block (2 rows with guidance, 40 query heads on 8 KV heads of 128 channels, P = 64
and 16, 1,024 and 4,160 cached positions) and the class-conditional B/L/H last decode step at 512 rows (64-channel
heads, P = 1, 4, 16). Floor: the K/V of every row up to the end of its block plus q and out, at the measured copy
bandwidth, or the FLOPs of QK^T and PV at the measured bf16 matrix rate, whichever is larger.
"""

import floors
import pytest
import torch
import torch.nn.functional as F
from shapes import C2I_PREFIX, C2I_ROWS, C2I_SIZES, C2I_TOKENS, T2I_14B, T2I_DECODE
from bitdance_rt.kernels.block_attention import block_attention_decode
from bitdance_rt.reference.attention import decode_allowed, masked_attention

try:
    from flash_attn import flash_attn_with_kvcache
except ImportError:
    flash_attn_with_kvcache = None

DTYPE = torch.bfloat16


def decode_row(benchmark, rows: int, q_heads: int, kv_heads: int, head_dim: int, block: int, cached: int) -> None:
    gen = torch.Generator(device="cuda").manual_seed(0)
    max_len = cached + block
    q = torch.randn(rows, q_heads, block, head_dim, generator=gen, device="cuda", dtype=DTYPE)
    keys, values = (torch.randn(rows, kv_heads, max_len, head_dim, generator=gen, device="cuda", dtype=DTYPE)
                    for _ in range(2))
    lengths = torch.full((rows,), cached, dtype=torch.int32, device="cuda")
    allowed = decode_allowed(lengths, block, max_len)
    scale = head_dim ** -0.5
    out = torch.empty_like(q)

    def ours():
        block_attention_decode(q, keys, values, lengths, scale, out=out)

    candidates = {
        "reference": lambda: masked_attention(q, keys, values, allowed, scale),
        "sdpa": lambda: F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed, scale=scale,
                                                       enable_gqa=q_heads != kv_heads),
    }
    if flash_attn_with_kvcache is not None:  # flash-attn's cache layout is [B, L, H, D]
        q_bshd, k_bshd, v_bshd = (x.transpose(1, 2).contiguous() for x in (q, keys, values))
        seqlens = lengths + block
        candidates["flash_attn"] = lambda: flash_attn_with_kvcache(q_bshd, k_bshd, v_bshd, cache_seqlens=seqlens,
                                                                   softmax_scale=scale, causal=False)

    element = torch.finfo(DTYPE).bits // 8
    bytes_moved = (2 * rows * kv_heads * max_len * head_dim + 2 * rows * q_heads * block * head_dim) * element
    flops = 4 * rows * q_heads * block * max_len * head_dim
    floors.record_row(benchmark, ours, candidates, bytes_moved, flops, iters=20)


@pytest.mark.parametrize("rows,block,cached", T2I_DECODE, ids=[f"P{p}-len{n}" for _, p, n in T2I_DECODE])
def test_bench_decode_t2i_14b(benchmark, rows, block, cached):
    decode_row(benchmark, rows, T2I_14B["q_heads"], T2I_14B["kv_heads"], T2I_14B["head_dim"], block, cached)


@pytest.mark.parametrize("block", [1, 4, 16])
@pytest.mark.parametrize("size", sorted(C2I_SIZES))
def test_bench_decode_c2i(benchmark, size, block):
    dim, heads, _ = C2I_SIZES[size]
    # the last AR step: inputs are [64 class tokens, P - 1 queries, 256 image tokens less the last P]; the last
    # block is the final P of them
    cached = C2I_PREFIX + C2I_TOKENS - 1 - block
    decode_row(benchmark, C2I_ROWS, heads, heads, dim // heads, block, cached)
