"""Microbenchmarks of the diffusion head's step fusions (bf16 on a CUDA GPU), each beside the PyTorch reference on
the same inputs and, for the patch attention, SDPA and flash-attn (when importable).

The head pass's fused ends, each beside the unfused operations it replaced in the engine (``unfused``) and the
PyTorch reference: ``input_projection`` (the float32 sample cast, projected C -> D, stored for both guidance
halves) vs cast + GEMM + ``repeat``; ``final_layer`` (before ``sampler_final``) vs ``layernorm_modulate`` + GEMM +
``sigmoid_output``; ``final_layer_step`` (the final layer and the guided sampler step, in place on the sample) vs
those three plus the Triton ``sampler_step``. The T2I head has a sigmoid output, the class-conditional ones not.

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

from bitdance_rt.kernels.final_layer import final_layer, final_layer_step
from bitdance_rt.kernels.gated_residual import gated_residual
from bitdance_rt.kernels.input_projection import input_projection
from bitdance_rt.kernels.layernorm_modulate import layernorm_modulate
from bitdance_rt.kernels.patch_attention import patch_attention
from bitdance_rt.kernels.sampler_step import sampler_step
from bitdance_rt.kernels.sigmoid_output import sigmoid_output
from bitdance_rt.kernels.swiglu import swiglu
from bitdance_rt.reference.diffusion_head import LN_EPS
from bitdance_rt.reference.head_ops import (final_layer_ref, final_layer_step_ref, gated_residual_ref,
                                            input_projection_ref, layernorm_modulate_ref, patch_attention_ref,
                                            swiglu_ref)
from bitdance_rt.reference.sampler import running_times, step_times

DTYPE = torch.bfloat16
ELEMENT = 2  # bytes per bf16 element
C2I_PATCH = 16
C2I_HEAD_ATTN_DIM = 64  # spec §3: the class-conditional TransBlock heads use 64-channel attention heads
TOKEN_CHANNELS = T2I_14B["token_channels"]  # 32 for every released model
NUM_STEPS, STEP, CFG = 50, 25, 4.0

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


def sigmoid_head(shape: str) -> bool:
    return shape.startswith("t2i")  # the 14B T2I head maps its output through 2·sigmoid − 1


@pytest.mark.parametrize("shape", list(HEAD_SHAPES))
def test_bench_input_projection(benchmark, shape):
    """Guided: ``[N/2]`` sample rows in, N rows out."""
    tokens, patch, width, _ = HEAD_SHAPES[shape]
    x = floors.cuda_randn(tokens // (2 * patch), patch, TOKEN_CHANNELS, seed=20, dtype=torch.float32)
    weight = floors.cuda_randn(width, TOKEN_CHANNELS, seed=21, scale=TOKEN_CHANNELS ** -0.5)
    bias = floors.cuda_randn(width, seed=22, scale=0.1)
    out = torch.empty(tokens, width, device="cuda", dtype=DTYPE)
    floors.record_row(benchmark, lambda: input_projection(x, weight, bias, 2, out=out),
                      {"unfused": lambda: F.linear(x.to(DTYPE), weight, bias).reshape(-1, width).repeat(2, 1),
                       "reference": lambda: input_projection_ref(x, weight, bias, 2)},
                      bytes_moved=4 * x.numel() + ELEMENT * (weight.numel() + width + tokens * width),
                      flops=2 * (tokens // 2) * TOKEN_CHANNELS * width)


def final_inputs(tokens: int, width: int, seed: int):
    x = floors.cuda_randn(tokens, width, seed=seed)
    scale, shift = floors.cuda_randn(tokens, 2 * width, seed=seed + 1, scale=0.5).chunk(2, dim=-1)
    weight = floors.cuda_randn(TOKEN_CHANNELS, width, seed=seed + 2, scale=width ** -0.5)
    return x, scale, shift, weight, floors.cuda_randn(TOKEN_CHANNELS, seed=seed + 3, scale=0.1)


def unfused_final_layer(x, scale, shift, weight, bias, sigmoid):
    """The engine's final layer before ``final_layer``: three launches (two without a sigmoid output)."""
    out = F.linear(layernorm_modulate(x, scale, shift, None, None, LN_EPS), weight, bias)
    return sigmoid_output(out, out=out) if sigmoid else out


def final_layer_bytes(tokens: int, width: int) -> int:
    return ELEMENT * (3 * tokens * width + TOKEN_CHANNELS * (width + 1))


@pytest.mark.parametrize("shape", list(HEAD_SHAPES))
def test_bench_final_layer(benchmark, shape):
    tokens, _, width, _ = HEAD_SHAPES[shape]
    x, scale, shift, weight, bias = final_inputs(tokens, width, seed=30)
    sigmoid = sigmoid_head(shape)
    out = torch.empty(tokens, TOKEN_CHANNELS, device="cuda", dtype=DTYPE)
    floors.record_row(benchmark, lambda: final_layer(x, scale, shift, weight, bias, LN_EPS, sigmoid, out=out),
                      {"unfused": lambda: unfused_final_layer(x, scale, shift, weight, bias, sigmoid),
                       "reference": lambda: final_layer_ref(x, scale, shift, weight, bias, LN_EPS, sigmoid)},
                      bytes_moved=final_layer_bytes(tokens, width) + ELEMENT * tokens * TOKEN_CHANNELS,
                      flops=2 * tokens * width * TOKEN_CHANNELS)


@pytest.mark.parametrize("shape", list(HEAD_SHAPES))
def test_bench_final_layer_step(benchmark, shape):
    """Guided step STEP of NUM_STEPS, cfg a device tensor (as in the engine's graphs), the sample updated in place."""
    tokens, patch, width, _ = HEAD_SHAPES[shape]
    x, scale, shift, weight, bias = final_inputs(tokens, width, seed=40)
    sigmoid = sigmoid_head(shape)
    batch = tokens // (2 * patch)
    sample = floors.cuda_randn(batch, patch, TOKEN_CHANNELS, seed=44, dtype=torch.float32)
    noise = floors.cuda_randn(batch, patch, TOKEN_CHANNELS, seed=45, dtype=torch.float32)
    times = step_times(NUM_STEPS, 1.0, "cuda")
    running = running_times(times)
    cfg = torch.full((1,), CFG, device="cuda")
    t, dt = running[STEP], times[STEP + 1] - times[STEP]

    def unfused():
        pred = unfused_final_layer(x, scale, shift, weight, bias, sigmoid).view(2 * batch, patch, TOKEN_CHANNELS)
        return sampler_step(pred, sample, noise, times, running, STEP, cfg, True, out=sample)

    floors.record_row(benchmark, lambda: final_layer_step(x, scale, shift, weight, bias, LN_EPS, sigmoid, sample,
                                                          noise, times, running, STEP, cfg, True, out=sample),
                      {"unfused": unfused,
                       "reference": lambda: final_layer_step_ref(x, scale, shift, weight, bias, LN_EPS, sigmoid,
                                                                 sample, noise, t, dt, cfg, True)},
                      bytes_moved=final_layer_bytes(tokens, width) + 3 * 4 * sample.numel(),
                      flops=2 * tokens * width * TOKEN_CHANNELS)
