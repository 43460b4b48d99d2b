"""Microbenchmarks of the diffusion head's step fusions (bf16 on a CUDA GPU), each beside the PyTorch reference on
the same inputs and, for the patch attention, SDPA and flash-attn (when importable).

Shapes (bench/shapes.py): the 14B T2I head's step (128 tokens = 2 guidance rows × P = 64, D = 5120, SwiGLU hidden
7680, attention heads of 128) and the class-conditional B/L/H TransBlock heads at 512 rows × P = 16 (8192 tokens,
heads of 64). Modulation operands are strided chunks of one ``[N, 6D]`` adaLN output, as in the head.

One row per kernel and shape; pytest-benchmark times our kernel (each round synchronised). ``extra_info`` holds
CUDA-event times of back-to-back calls (GPU time) of ours (``ours_s``) and of each comparison (``reference_s``,
``sdpa_s``, ``flash_attn_s``), the bytes read + written and FLOPs of one call, their floor
(``floors.floor_seconds``: ``floor_s``), ``ours_over_floor``, for attention ``ours_over_best_of_sdpa_flash``, and
the GPU environment.
"""

from __future__ import annotations


import floors
import pytest
import torch
import torch.nn.functional as F
from shapes import C2I_ROWS, C2I_SIZES, T2I_14B, T2I_HEAD_TOKENS

from bitdance_rt.kernels.gated_residual import gated_residual
from bitdance_rt.kernels.layernorm_modulate import layernorm_modulate
from bitdance_rt.kernels.patch_attention import patch_attention
from bitdance_rt.kernels.swiglu import swiglu
from bitdance_rt.reference.diffusion_head import LN_EPS
from bitdance_rt.reference.head_ops import (gated_residual_ref, layernorm_modulate_ref, patch_attention_ref,
                                            swiglu_ref)

DTYPE = torch.bfloat16
ELEMENT = 2  # bytes per bf16 element
C2I_PATCH = 16
C2I_HEAD_ATTN_DIM = 64  # spec §3: the class-conditional TransBlock heads use 64-channel attention heads

# name: (tokens N, patch P, width D, attention head dim)
HEAD_SHAPES = {
    "t2i14b": (T2I_HEAD_TOKENS, 64, T2I_14B["head_width"], T2I_14B["head_attn_dim"]),
    **{f"c2i{size}_p{C2I_PATCH}": (C2I_ROWS * C2I_PATCH, C2I_PATCH, width, C2I_HEAD_ATTN_DIM)
       for size, (_, _, width) in C2I_SIZES.items()},
}

try:
    from flash_attn import flash_attn_func
except ImportError:
    flash_attn_func = None






@pytest.mark.parametrize("shape", list(HEAD_SHAPES))
def test_bench_layernorm_modulate(benchmark, shape):
    tokens, _, width, _ = HEAD_SHAPES[shape]
    x = floors.cuda_randn(tokens, width, seed=0)
    scale, shift, *_ = floors.cuda_randn(tokens, 6 * width, seed=1, scale=0.5).chunk(6, dim=-1)
    weight, bias = 1 + floors.cuda_randn(width, seed=2, scale=0.2), floors.cuda_randn(width, seed=3, scale=0.1)
    out = torch.empty_like(x)
    floors.record_row(benchmark, lambda: layernorm_modulate(x, scale, shift, weight, bias, LN_EPS, out=out),
            {"reference": lambda: layernorm_modulate_ref(x, scale, shift, weight, bias, LN_EPS)},
            bytes_moved=ELEMENT * (4 * tokens * width + 2 * width))


@pytest.mark.parametrize("shape", list(HEAD_SHAPES))
def test_bench_gated_residual(benchmark, shape):
    tokens, _, width, _ = HEAD_SHAPES[shape]
    x, h = floors.cuda_randn(tokens, width, seed=4), floors.cuda_randn(tokens, width, seed=5)
    gate = floors.cuda_randn(tokens, 6 * width, seed=6, scale=0.5).chunk(6, dim=-1)[2]
    # ours updates the residual stream in place, as the head does
    floors.record_row(benchmark, lambda: gated_residual(x, h, gate, out=x),
            {"reference": lambda: gated_residual_ref(x, h, gate)}, bytes_moved=ELEMENT * 4 * tokens * width)


@pytest.mark.parametrize("shape", list(HEAD_SHAPES))
def test_bench_swiglu(benchmark, shape):
    tokens, _, width, _ = HEAD_SHAPES[shape]
    hidden = int(1.5 * width)
    ab = floors.cuda_randn(tokens, 2 * hidden, seed=7, scale=2.0)
    out = torch.empty(tokens, hidden, device="cuda", dtype=DTYPE)
    floors.record_row(benchmark, lambda: swiglu(ab, out=out), {"reference": lambda: swiglu_ref(ab)},
            bytes_moved=ELEMENT * 3 * tokens * hidden)


def sdpa_patch_attention(qkv: torch.Tensor, head_dim: int) -> torch.Tensor:
    rows, patch, three_width = qkv.shape
    width = three_width // 3
    q, k, v = qkv.view(rows, patch, 3, width // head_dim, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(rows, patch, width)


def flash_patch_attention(qkv: torch.Tensor, head_dim: int) -> torch.Tensor:
    rows, patch, three_width = qkv.shape
    width = three_width // 3
    q, k, v = qkv.view(rows, patch, 3, width // head_dim, head_dim).unbind(2)
    return flash_attn_func(q, k, v, causal=False).view(rows, patch, width)


@pytest.mark.parametrize("shape", list(HEAD_SHAPES))
def test_bench_patch_attention(benchmark, shape):
    tokens, patch, width, head_dim = HEAD_SHAPES[shape]
    qkv = floors.cuda_randn(tokens // patch, patch, 3 * width, seed=8)
    out = torch.empty(tokens // patch, patch, width, device="cuda", dtype=DTYPE)
    candidates = {"reference": lambda: patch_attention_ref(qkv, head_dim),
                  "sdpa": lambda: sdpa_patch_attention(qkv, head_dim)}
    if flash_attn_func is not None:
        candidates["flash_attn"] = lambda: flash_patch_attention(qkv, head_dim)
    # two matrix products of P x P x head_dim per (patch, head): 4·N·P·D FLOPs
    floors.record_row(benchmark, lambda: patch_attention(qkv, head_dim, out=out), candidates,
            bytes_moved=ELEMENT * 4 * tokens * width, flops=4 * tokens * patch * width)
