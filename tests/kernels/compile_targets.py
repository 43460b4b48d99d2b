"""Compile every Triton kernel of ``bitdance_rt.kernels`` for the H100 (sm_90) on a machine without a GPU.

Triton's interpreter misses errors that only the real compiler sees (e.g. a name given blocks of different
shapes in the two branches of a runtime ``if``). This module runs each kernel's public launcher on CPU tensors of
the released models' shapes (``torch.empty``: nothing is read), catches the launch (``JITFunction.run`` is
replaced while a launcher runs), specialises its arguments as Triton's JIT would on a GPU (pointer and integer
divisibility, ints equal to 1, constexpr values, ``num_warps`` ...), and hands the result to ``triton.compile``
for ``GPUTarget("cuda", 90, 32)`` with the ``ptxas`` shipped with Triton. No driver, no device.

Run it in a process WITHOUT ``TRITON_INTERPRET`` (kernels decorated under it are interpreter objects):

    python tests/kernels/compile_targets.py --json report.json [--only NAME ...] [--jobs N]

The report is JSON: ``{"skip": reason}`` when this Triton build cannot compile for sm_90 here (no NVIDIA
backend, no ``ptxas``), else ``{"results": [...], "kernels_in_package": [...], "seconds": s}`` with one entry per
variant: its name, ``ok``, the error (kernel and message) when it failed, and per compiled kernel the cubin size,
registers, spill bytes, shared memory, warps and the MMA generation found in the TTGIR (3 = Hopper wgmma).
Importing this module imports neither Triton nor the kernels: the variant list is readable from any process.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import pkgutil
import re
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
ARCH = 90             # H100
WARP_SIZE = 32
MAX_SHARED_BYTES = 232448  # sm_90: 227 KiB of shared memory per block (opt-in maximum)
MAX_REGISTERS_PER_THREAD = 255
REGISTERS_PER_SM = 65536
ERROR_CHARS = 6000    # an error message is cut to its last ERROR_CHARS characters

# Released shapes (bench/shapes.py, spec §2-§3). Text-to-image 14B: Qwen3 backbone, guidance batch 2.
T2I_ROWS, T2I_P, T2I_HQ, T2I_HKV, T2I_D = 2, 64, 40, 8, 128
T2I_HIDDEN, T2I_CACHE, T2I_PREFILL = 5120, 4160, 320
T2I_HEAD_TOKENS, T2I_HEAD_WIDTH, T2I_HEAD_SWIGLU = 128, 5120, 7680  # head: 2 rows x P, D, 1.5·D
# Class-conditional H at batch 256 with guidance: 20 heads of 64 channels, P = 16, 64 class tokens + 256 image.
C2I_ROWS, C2I_P, C2I_HEADS, C2I_D, C2I_DIM, C2I_PREFIX, C2I_CACHE = 512, 16, 20, 64, 1280, 64, 320
TOKEN_CHANNELS = 32


def _empty(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype)


def _lengths(rows: int, value: int) -> torch.Tensor:
    return torch.full((rows,), value, dtype=torch.int32)


# --- one function per launch shape; each calls a public launcher exactly as the engine does -----------------------

def _rmsnorm_t2i(dtype: torch.dtype) -> None:
    from bitdance_rt.kernels.rmsnorm_residual import rmsnorm_residual
    rows = T2I_ROWS * T2I_P
    rmsnorm_residual(_empty(rows, T2I_HIDDEN, dtype=dtype), _empty(rows, T2I_HIDDEN, dtype=dtype),
                     _empty(T2I_HIDDEN, dtype=dtype), 1e-6, style="hf")


def _rmsnorm_c2i_first(dtype: torch.dtype) -> None:
    """The embedding norm: no residual yet, nothing but y written."""
    from bitdance_rt.kernels.rmsnorm_residual import rmsnorm_residual
    rows = C2I_ROWS * C2I_P
    rmsnorm_residual(_empty(rows, C2I_DIM, dtype=dtype), None, _empty(C2I_DIM, dtype=dtype), 1e-5, style="torch")


def _rmsnorm_c2i_autocast() -> None:
    """A bf16 sublayer output added to the float32 residual stream; y cast to bf16 for the next GEMM."""
    from bitdance_rt.kernels.rmsnorm_residual import rmsnorm_residual
    rows = C2I_ROWS * C2I_P
    rmsnorm_residual(_empty(rows, C2I_DIM, dtype=torch.bfloat16), _empty(rows, C2I_DIM), _empty(C2I_DIM), 1e-5,
                     style="torch", out=_empty(rows, C2I_DIM, dtype=torch.bfloat16))


def _qk_norm_rope(dtype: torch.dtype) -> None:
    from bitdance_rt.kernels.pre_attention import qk_norm_rope_append
    hq, hkv = T2I_HQ, T2I_HKV
    qkv = _empty(T2I_ROWS, T2I_P, hq + 2 * hkv, T2I_D, dtype=dtype)  # the fused q/k/v GEMM's output
    cache = _empty(T2I_ROWS, hkv, T2I_CACHE, T2I_D, dtype=dtype)
    qk_norm_rope_append(qkv[:, :, :hq], qkv[:, :, hq:hq + hkv], qkv[:, :, hq + hkv:], _empty(T2I_D, dtype=dtype),
                        _empty(T2I_D, dtype=dtype), 1e-6, _empty(T2I_CACHE, T2I_D), _empty(T2I_CACHE, T2I_D),
                        cache, torch.empty_like(cache), _lengths(T2I_ROWS, 1000))


def _rope_interleaved(dtype: torch.dtype) -> None:
    from bitdance_rt.kernels.pre_attention import rope_append_interleaved
    heads = C2I_HEADS
    qkv = _empty(C2I_ROWS, C2I_P, 3 * heads, C2I_D, dtype=dtype)
    cache = _empty(C2I_ROWS, heads, C2I_CACHE, C2I_D, dtype=dtype)
    rope_append_interleaved(qkv[:, :, :heads], qkv[:, :, heads:2 * heads], qkv[:, :, 2 * heads:],
                            _empty(C2I_CACHE, C2I_D // 2), _empty(C2I_CACHE, C2I_D // 2), cache,
                            torch.empty_like(cache), _lengths(C2I_ROWS, 100))


def _decode(dtype: torch.dtype, head_dim: int, splits: int, block: int | None = None) -> None:
    from bitdance_rt.kernels.block_attention import block_attention_decode
    if head_dim == T2I_D:
        rows, hq, hkv, p, cache_len = T2I_ROWS, T2I_HQ, T2I_HKV, T2I_P, T2I_CACHE
    else:
        rows, hq, hkv, p, cache_len = C2I_ROWS, C2I_HEADS, C2I_HEADS, C2I_P, C2I_CACHE
    p = p if block is None else block
    cache = _empty(rows, hkv, cache_len, head_dim, dtype=dtype)
    block_attention_decode(_empty(rows, hq, p, head_dim, dtype=dtype), cache, torch.empty_like(cache),
                           _lengths(rows, cache_len // 2), head_dim ** -0.5, key_splits=splits)


def _prefill(dtype: torch.dtype, head_dim: int) -> None:
    from bitdance_rt.kernels.block_attention import block_attention_prefill
    if head_dim == T2I_D:  # prompt causal, then the P start tokens as one block
        rows, hq, hkv, tokens, cache_len, block = T2I_ROWS, T2I_HQ, T2I_HKV, T2I_PREFILL, T2I_CACHE, T2I_P
    else:  # 64 class tokens + P − 1 queries: causal over 63, then one block
        rows, hq, hkv, block, cache_len = C2I_ROWS, C2I_HEADS, C2I_HEADS, C2I_P, C2I_CACHE
        tokens = C2I_PREFIX + block - 1
    cache = _empty(rows, hkv, cache_len, head_dim, dtype=dtype)
    lengths = _lengths(rows, tokens)
    block_attention_prefill(_empty(rows, hq, tokens, head_dim, dtype=dtype), cache, torch.empty_like(cache),
                            lengths, lengths - block, block, head_dim ** -0.5)


def _layernorm_modulate(dtype: torch.dtype, affine: bool) -> None:
    from bitdance_rt.kernels.layernorm_modulate import layernorm_modulate
    width = T2I_HEAD_WIDTH
    mod = _empty(T2I_HEAD_TOKENS, 6 * width, dtype=dtype)  # one adaLN output, chunked
    weight, bias = (_empty(width, dtype=dtype), _empty(width, dtype=dtype)) if affine else (None, None)
    layernorm_modulate(_empty(T2I_HEAD_TOKENS, width, dtype=dtype), mod[:, width:2 * width], mod[:, :width],
                       weight, bias, 1e-6)


def _gated_residual(dtype: torch.dtype) -> None:
    from bitdance_rt.kernels.gated_residual import gated_residual
    width = T2I_HEAD_WIDTH
    x = _empty(T2I_HEAD_TOKENS, width, dtype=dtype)
    mod = _empty(T2I_HEAD_TOKENS, 6 * width, dtype=dtype)
    gated_residual(x, _empty(T2I_HEAD_TOKENS, width, dtype=dtype), mod[:, 2 * width:3 * width], out=x)


def _time_condition(dtype: torch.dtype) -> None:
    from bitdance_rt.kernels.time_condition import time_condition
    time_condition(_empty(T2I_HEAD_TOKENS, 1536, dtype=dtype), _empty(1536, dtype=dtype))


def _sigmoid_output(dtype: torch.dtype) -> None:
    from bitdance_rt.kernels.sigmoid_output import sigmoid_output
    sigmoid_output(_empty(T2I_HEAD_TOKENS, 32, dtype=dtype))


def _input_projection(dtype: torch.dtype, rows: int, patch: int, width: int) -> None:
    """The head's input projection of the guided sample (both halves written), T2I 14B (the class-conditional
    shapes specialise the same way)."""
    from bitdance_rt.kernels.input_projection import input_projection
    input_projection(_empty(rows // 2, patch, TOKEN_CHANNELS), _empty(width, TOKEN_CHANNELS, dtype=dtype),
                     _empty(width, dtype=dtype), 2)


def _final_layer(dtype: torch.dtype, rows: int, width: int) -> None:
    from bitdance_rt.kernels.final_layer import final_layer
    mods = _empty(rows, 2 * width, dtype=dtype)
    final_layer(_empty(rows, width, dtype=dtype), mods[:, :width], mods[:, width:],
                _empty(TOKEN_CHANNELS, width, dtype=dtype), _empty(TOKEN_CHANNELS, dtype=dtype), 1e-6, True)


def _final_layer_step(dtype: torch.dtype, rows: int, patch: int, width: int, per_row_cfg: bool) -> None:
    """The final layer and the guided sampler step of the T2I 14B head (sigmoid output) or class-conditional H."""
    from bitdance_rt.kernels.final_layer import final_layer_step
    batch, steps = rows // (2 * patch), 25
    mods = _empty(rows, 2 * width, dtype=dtype)
    sample = _empty(batch, patch, TOKEN_CHANNELS)
    final_layer_step(_empty(rows, width, dtype=dtype), mods[:, :width], mods[:, width:],
                     _empty(TOKEN_CHANNELS, width, dtype=dtype), _empty(TOKEN_CHANNELS, dtype=dtype), 1e-6,
                     not per_row_cfg, sample, torch.empty_like(sample), _empty(steps + 1), _empty(steps), 3,
                     _empty(batch) if per_row_cfg else 4.0, True, out=sample)


def _group_norm_silu(dtype: torch.dtype, channels_last: bool = False, channels: int = 128, side: int = 64) -> None:
    from bitdance_rt.kernels.group_norm_silu import group_norm_silu
    x = _empty(2, channels, side, side, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    group_norm_silu(x, _empty(channels, dtype=dtype), _empty(channels, dtype=dtype), 32, 1e-6)


def _token_styled_group_norm(dtype: torch.dtype, channels_last: bool, side: int = 64) -> None:
    from bitdance_rt.kernels.group_norm_silu import token_styled_group_norm
    x = _empty(2, 256, side, side, dtype=dtype)  # the released decoder's level-0 width, in place as the engine runs it
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    token_styled_group_norm(x, _empty(2, 256, dtype=dtype), _empty(2, 256, dtype=dtype), 32, 1e-6, out=x)


def _swiglu(dtype: torch.dtype) -> None:
    from bitdance_rt.kernels.swiglu import swiglu
    swiglu(_empty(T2I_HEAD_TOKENS, 2 * T2I_HEAD_SWIGLU, dtype=dtype))


def _patch_attention(dtype: torch.dtype, head_dim: int) -> None:
    from bitdance_rt.kernels.patch_attention import patch_attention
    if head_dim == T2I_D:
        rows, p, width = T2I_ROWS, T2I_P, T2I_HEAD_WIDTH
    else:
        rows, p, width = C2I_ROWS, C2I_P, C2I_DIM
    patch_attention(_empty(rows, p, 3 * width, dtype=dtype), head_dim)


def _sampler_step(pred_dtype: torch.dtype, guided: bool) -> None:
    from bitdance_rt.kernels.sampler_step import sampler_step
    rows, steps = T2I_ROWS // 2, 25
    x = _empty(rows, T2I_P, TOKEN_CHANNELS)
    pred = _empty(rows * (2 if guided else 1), T2I_P, TOKEN_CHANNELS, dtype=pred_dtype)
    sampler_step(pred, x, torch.empty_like(x), _empty(steps + 1), _empty(steps), 3, 4.0, guided, out=x)


def _sampler_final(pred_dtype: torch.dtype, pack: bool) -> None:
    from bitdance_rt.kernels.sampler_step import sampler_final
    rows = T2I_ROWS // 2
    sampler_final(_empty(2 * rows, T2I_P, TOKEN_CHANNELS, dtype=pred_dtype), _empty(rows, T2I_P, TOKEN_CHANNELS),
                  4.0, True, pack=pack, keep_sample=pack)


def _sign(dtype: torch.dtype) -> None:
    from bitdance_rt.kernels.token_packing import sign_quantize
    sign_quantize(_empty(C2I_ROWS, C2I_P, TOKEN_CHANNELS, dtype=dtype))


def _pack(dtype: torch.dtype) -> None:
    from bitdance_rt.kernels.token_packing import pack_signs
    pack_signs(_empty(C2I_ROWS, C2I_P, TOKEN_CHANNELS, dtype=dtype))


def _unpack(dtype: torch.dtype) -> None:
    from bitdance_rt.kernels.token_packing import unpack_signs
    unpack_signs(_empty(C2I_ROWS, C2I_P, 1, dtype=torch.int32), dtype)


# 8-bit weights (issue 12): the 14B linears at the decode block (M = 2 guidance rows x P = 64 = 128 rows: split-K
# where N = 5,120 leaves SMs idle; 32 rows for P = 16) and at 1,024 rows; activations quantized per token and per
# group.
Q_DECODE_ROWS, Q_P16_ROWS, Q_BATCH_ROWS, Q_FFN, Q_QKV = T2I_ROWS * T2I_P, T2I_ROWS * 16, 1024, 17408, 7168


def _int8_weight_gemm(dtype: torch.dtype, m: int, n: int, k: int, bias: bool = False) -> None:
    from bitdance_rt.kernels.int8_weight_gemm import int8_weight_gemm
    int8_weight_gemm(_empty(m, k, dtype=dtype), _empty(n, k, dtype=torch.int8), _empty(n),
                     _empty(n, dtype=dtype) if bias else None)


def _fp8_gemm(m: int, n: int, k: int, grouped: bool, blocked: bool, bias: bool = False) -> None:
    from bitdance_rt.kernels.fp8_gemm import fp8_gemm
    fp8, groups = torch.float8_e4m3fn, -(-k // 128)
    fp8_gemm(_empty(m, k, dtype=fp8), _empty(m, groups) if grouped else _empty(m), _empty(n, k, dtype=fp8),
             _empty(-(-n // 128), groups) if blocked else _empty(n), _empty(n, dtype=torch.bfloat16) if bias else None,
             out_dtype=torch.bfloat16)


def _gemm_epilogue_args(m: int, n: int, dtype: torch.dtype, epilogue: str) -> dict:
    """The epilogue keywords of our GEMMs: the gated residual writes into the residual x, its gate a strided column
    chunk of a wider adaLN output."""
    if epilogue != "gated_residual":
        return {"epilogue": epilogue}
    return {"epilogue": epilogue, "out": _empty(m, n, dtype=dtype), "gate": _empty(m, 3 * n, dtype=dtype)[:, n:2 * n]}


def _float_gemm(dtype: torch.dtype, m: int, n: int, k: int, bias: bool = False, epilogue: str = "bias",
                split_k: int | None = None) -> None:
    """``n``: the weight's rows (2H for SwiGLU). CPU tensors take one K range unless ``split_k`` forces more."""
    from bitdance_rt.kernels.float_gemm import float_gemm
    out_n = n // 2 if epilogue == "swiglu" else n
    float_gemm(_empty(m, k, dtype=dtype), _empty(n, k, dtype=dtype), _empty(n, dtype=dtype) if bias else None,
               split_k=split_k, **_gemm_epilogue_args(m, out_n, dtype, epilogue))


def _int8_gemm_epilogue(m: int, n: int, k: int, epilogue: str) -> None:
    from bitdance_rt.kernels.int8_weight_gemm import int8_weight_gemm
    out_n = n // 2 if epilogue == "swiglu" else n
    int8_weight_gemm(_empty(m, k, dtype=torch.bfloat16), _empty(n, k, dtype=torch.int8), _empty(n),
                     _empty(n, dtype=torch.bfloat16), **_gemm_epilogue_args(m, out_n, torch.bfloat16, epilogue))


def _fp8_gemm_epilogue(m: int, n: int, k: int, blocked: bool, epilogue: str) -> None:
    from bitdance_rt.kernels.fp8_gemm import fp8_gemm
    fp8, groups = torch.float8_e4m3fn, -(-k // 128)
    out_n = n // 2 if epilogue == "swiglu" else n
    fp8_gemm(_empty(m, k, dtype=fp8), _empty(m), _empty(n, k, dtype=fp8),
             _empty(-(-n // 128), groups) if blocked else _empty(n), _empty(n, dtype=torch.bfloat16),
             out_dtype=torch.bfloat16, **_gemm_epilogue_args(m, out_n, torch.bfloat16, epilogue))


def _fp8_activation_quant(dtype: torch.dtype, m: int, k: int, group_size: int | None) -> None:
    from bitdance_rt.kernels.fp8_activation_quant import fp8_activation_quant
    fp8_activation_quant(_empty(m, k, dtype=dtype), group_size)


def _branch_shape_canary() -> None:
    """Not a project kernel: runs in the interpreter but fails in the compiler (a name given blocks of two shapes
    by the branches of a runtime ``if``), so the test can check that this harness reports such an error."""
    import triton
    import triton.language as tl

    @triton.jit
    def _canary_kernel(out_ptr, n, BLOCK: tl.constexpr):
        if tl.program_id(0) < n:
            values = tl.arange(0, BLOCK)
        else:
            values = tl.arange(0, 2 * BLOCK)
        tl.store(out_ptr + tl.arange(0, BLOCK), tl.sum(values, axis=0))

    _canary_kernel[(1,)](_empty(16, dtype=torch.int32), 16, BLOCK=16)


@dataclass(frozen=True)
class Variant:
    """One launcher call to compile: ``launch`` runs it on CPU tensors; ``kernels`` names the @triton.jit kernels
    it must launch, in order."""
    name: str
    launch: Callable[[], None]
    kernels: tuple[str, ...]


def _both_dtypes(name: str, launch: Callable[[torch.dtype], None], kernels: tuple[str, ...]) -> list[Variant]:
    return [Variant(f"{name}/{tag}", lambda dtype=dtype: launch(dtype), kernels)
            for tag, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))]


DECODE, MERGE, PREFILL = ("_decode_kernel",), ("_merge_splits_kernel",), ("_prefill_kernel",)
# the float-weight and int8 weight-only GEMMs share one main loop (kernels/_weight_gemm.py)
INT8_GEMM = FLOAT_GEMM = ("weight_gemm_kernel",)
FP8_GEMM, REDUCE = ("_fp8_gemm_kernel",), ("_split_k_reduce_kernel",)
FP8_QUANT = ("_fp8_activation_quant_kernel",)
VARIANTS: tuple[Variant, ...] = (
    *_both_dtypes("rmsnorm_residual/t2i-hf-5120", _rmsnorm_t2i, ("_rmsnorm_residual_kernel",)),
    Variant("rmsnorm_residual/c2i-torch-no-residual-1280/bf16", lambda: _rmsnorm_c2i_first(torch.bfloat16),
            ("_rmsnorm_residual_kernel",)),
    Variant("rmsnorm_residual/c2i-torch-autocast-1280/bf16+fp32", _rmsnorm_c2i_autocast,
            ("_rmsnorm_residual_kernel",)),
    *_both_dtypes("pre_attention/qk-norm-rope-half-D128-40q8kv", _qk_norm_rope, ("_pre_attention_kernel",)),
    *_both_dtypes("pre_attention/rope-interleaved-D64-20h", _rope_interleaved, ("_pre_attention_kernel",)),
    *_both_dtypes("block_attention/decode-D128-P64", lambda dtype: _decode(dtype, 128, 1), DECODE),
    *_both_dtypes("block_attention/decode-split2-D128-P64", lambda dtype: _decode(dtype, 128, 2), DECODE + MERGE),
    *_both_dtypes("block_attention/decode-D64-P16", lambda dtype: _decode(dtype, 64, 1), DECODE),
    Variant("block_attention/decode-split4-D64-P1/bf16", lambda: _decode(torch.bfloat16, 64, 4, block=1),
            DECODE + MERGE),
    *_both_dtypes("block_attention/prefill-D128-P64", lambda dtype: _prefill(dtype, 128), PREFILL),
    *_both_dtypes("block_attention/prefill-D64-P16", lambda dtype: _prefill(dtype, 64), PREFILL),
    *_both_dtypes("layernorm_modulate/affine-5120", lambda dtype: _layernorm_modulate(dtype, True),
                  ("_layernorm_modulate_kernel",)),
    Variant("layernorm_modulate/final-no-affine-5120/bf16", lambda: _layernorm_modulate(torch.bfloat16, False),
            ("_layernorm_modulate_kernel",)),
    *_both_dtypes("gated_residual/5120", _gated_residual, ("_gated_residual_kernel",)),
    *_both_dtypes("swiglu/7680", _swiglu, ("_swiglu_kernel",)),
    *_both_dtypes("time_condition/1536", _time_condition, ("_time_condition_kernel",)),
    *_both_dtypes("sigmoid_output/32", _sigmoid_output, ("_sigmoid_output_kernel",)),
    *_both_dtypes("input_projection/t2i-guided-5120", lambda dtype: _input_projection(dtype, T2I_HEAD_TOKENS, T2I_P,
                                                                                      T2I_HEAD_WIDTH),
                  ("_input_projection_kernel",)),
    *_both_dtypes("final_layer/t2i-sigmoid-5120", lambda dtype: _final_layer(dtype, T2I_HEAD_TOKENS, T2I_HEAD_WIDTH),
                  ("_final_layer_kernel",)),
    *_both_dtypes("final_layer_step/t2i-guided-sigmoid-5120",
                  lambda dtype: _final_layer_step(dtype, T2I_HEAD_TOKENS, T2I_P, T2I_HEAD_WIDTH, False),
                  ("_final_layer_step_kernel",)),
    Variant("final_layer_step/c2i-guided-per-row-cfg-1280/bf16",
            lambda: _final_layer_step(torch.bfloat16, C2I_ROWS * C2I_P, C2I_P, C2I_DIM, True),
            ("_final_layer_step_kernel",)),
    *_both_dtypes("group_norm_silu/128x64x64", _group_norm_silu, ("_group_norm_silu_kernel",)),
    *_both_dtypes("group_norm_silu/nhwc-256x64x64", lambda dtype: _group_norm_silu(dtype, True, 256),
                  ("_group_norm_silu_kernel",)),
    Variant("group_norm_silu/nhwc-1024x64x64/bf16", lambda: _group_norm_silu(torch.bfloat16, True, 1024),
            ("_group_stats_kernel", "_group_norm_silu_kernel")),  # 32 channels x 4096 pixels per group: split
    *_both_dtypes("group_norm_silu/token-styled-256x64x64", lambda dtype: _token_styled_group_norm(dtype, False),
                  ("_group_norm_silu_kernel",)),
    *_both_dtypes("group_norm_silu/token-styled-nhwc-256x64x64",
                  lambda dtype: _token_styled_group_norm(dtype, True), ("_group_norm_silu_kernel",)),
    # the released decoder's level 0 at 256² (8 x 65536 elements per group): split across programs
    *_both_dtypes("group_norm_silu/split-nhwc-256x256x256", lambda dtype: _group_norm_silu(dtype, True, 256, 256),
                  ("_group_stats_kernel", "_group_norm_silu_kernel")),
    Variant("group_norm_silu/split-nchw-256x256x256/bf16", lambda: _group_norm_silu(torch.bfloat16, False, 256, 256),
            ("_group_stats_kernel", "_group_norm_silu_kernel")),
    Variant("group_norm_silu/token-styled-split-nhwc-256x256x256/bf16",
            lambda: _token_styled_group_norm(torch.bfloat16, True, 256), ("_group_stats_kernel", "_group_norm_silu_kernel")),
    *_both_dtypes("patch_attention/D128-P64", lambda dtype: _patch_attention(dtype, 128),
                  ("_patch_attention_kernel",)),
    Variant("patch_attention/D64-P16/bf16", lambda: _patch_attention(torch.bfloat16, 64),
            ("_patch_attention_kernel",)),
    *_both_dtypes("sampler_step/guided", lambda dtype: _sampler_step(dtype, True), ("_sampler_step_kernel",)),
    Variant("sampler_step/unguided/fp32", lambda: _sampler_step(torch.float32, False), ("_sampler_step_kernel",)),
    *_both_dtypes("sampler_final/guided", lambda dtype: _sampler_final(dtype, False), ("_sampler_final_kernel",)),
    *_both_dtypes("sampler_final/guided-pack-keep-sample", lambda dtype: _sampler_final(dtype, True),
                  ("_sampler_final_kernel",)),
    *_both_dtypes("token_packing/sign", _sign, ("_sign_kernel",)),
    *_both_dtypes("token_packing/pack", _pack, ("_pack_kernel",)),
    *_both_dtypes("token_packing/unpack", _unpack, ("_unpack_kernel",)),
    Variant("int8_weight_gemm/M128-5120x5120-split/bf16",
            lambda: _int8_weight_gemm(torch.bfloat16, Q_DECODE_ROWS, T2I_HIDDEN, T2I_HIDDEN), INT8_GEMM + REDUCE),
    Variant("int8_weight_gemm/M128-5120x5120/fp32",  # 64-wide float32 tiles fill the SMs: no split
            lambda: _int8_weight_gemm(torch.float32, Q_DECODE_ROWS, T2I_HIDDEN, T2I_HIDDEN), INT8_GEMM),
    Variant("int8_weight_gemm/M1024-5120x17408/bf16",
            lambda: _int8_weight_gemm(torch.bfloat16, Q_BATCH_ROWS, T2I_HIDDEN, Q_FFN), INT8_GEMM),
    Variant("int8_weight_gemm/M128-15360x5120-bias/bf16",
            lambda: _int8_weight_gemm(torch.bfloat16, Q_DECODE_ROWS, 3 * T2I_HEAD_WIDTH, T2I_HIDDEN, True), INT8_GEMM),
    Variant("fp8_gemm/M128-token-channel-5120x5120-bias-split",
            lambda: _fp8_gemm(Q_DECODE_ROWS, T2I_HIDDEN, T2I_HIDDEN, False, False, True), FP8_GEMM + REDUCE),
    Variant("fp8_gemm/M32-group-block-7168x5120-split",
            lambda: _fp8_gemm(Q_P16_ROWS, Q_QKV, T2I_HIDDEN, True, True), FP8_GEMM + REDUCE),
    Variant("fp8_gemm/M32-token-channel-34816x5120",
            lambda: _fp8_gemm(Q_P16_ROWS, 2 * Q_FFN, T2I_HIDDEN, False, False), FP8_GEMM),
    Variant("fp8_gemm/M1024-group-block-5120x7680-bias",
            lambda: _fp8_gemm(Q_BATCH_ROWS, T2I_HIDDEN, T2I_HEAD_SWIGLU, True, True, True), FP8_GEMM),
    Variant("fp8_gemm/M1024-token-channel-5120x17408",
            lambda: _fp8_gemm(Q_BATCH_ROWS, T2I_HIDDEN, Q_FFN, False, False), FP8_GEMM),
    # our float GEMM and the fused epilogues of all three GEMMs (issue "batch throughput"): the 14B linears at
    # 128 rows (split-K forced: CPU tensors take one K range by default) and 1,024 rows
    Variant("float_gemm/M128-5120x5120-split3/bf16",
            lambda: _float_gemm(torch.bfloat16, Q_DECODE_ROWS, T2I_HIDDEN, T2I_HIDDEN, split_k=3), FLOAT_GEMM + REDUCE),
    Variant("float_gemm/M1024-5120x17408/bf16",
            lambda: _float_gemm(torch.bfloat16, Q_BATCH_ROWS, T2I_HIDDEN, Q_FFN), FLOAT_GEMM),
    Variant("float_gemm/M128-34816x5120-swiglu/bf16",
            lambda: _float_gemm(torch.bfloat16, Q_DECODE_ROWS, 2 * Q_FFN, T2I_HIDDEN, epilogue="swiglu"),
            FLOAT_GEMM),
    Variant("float_gemm/M128-15360x5120-swiglu-bias-split2/bf16",
            lambda: _float_gemm(torch.bfloat16, Q_DECODE_ROWS, 2 * T2I_HEAD_SWIGLU, T2I_HEAD_WIDTH, True, "swiglu",
                                2), FLOAT_GEMM + REDUCE),
    Variant("float_gemm/M128-5120x7680-gated-bias-split3/bf16",
            lambda: _float_gemm(torch.bfloat16, Q_DECODE_ROWS, T2I_HEAD_WIDTH, T2I_HEAD_SWIGLU, True,
                                "gated_residual", 3), FLOAT_GEMM + REDUCE),
    Variant("float_gemm/M128-5120x5120-gated-bias/fp32",
            lambda: _float_gemm(torch.float32, Q_DECODE_ROWS, T2I_HEAD_WIDTH, T2I_HEAD_WIDTH, True, "gated_residual"),
            FLOAT_GEMM),
    Variant("int8_weight_gemm/M128-15360x5120-swiglu-split",
            lambda: _int8_gemm_epilogue(Q_DECODE_ROWS, 2 * T2I_HEAD_SWIGLU, T2I_HEAD_WIDTH, "swiglu"),
            INT8_GEMM + REDUCE),
    Variant("int8_weight_gemm/M1024-5120x7680-gated",
            lambda: _int8_gemm_epilogue(Q_BATCH_ROWS, T2I_HEAD_WIDTH, T2I_HEAD_SWIGLU, "gated_residual"), INT8_GEMM),
    Variant("fp8_gemm/M1024-token-block-34816x5120-swiglu",
            lambda: _fp8_gemm_epilogue(Q_BATCH_ROWS, 2 * Q_FFN, T2I_HIDDEN, True, "swiglu"), FP8_GEMM),
    Variant("fp8_gemm/M128-token-channel-5120x5120-gated-split",
            lambda: _fp8_gemm_epilogue(Q_DECODE_ROWS, T2I_HEAD_WIDTH, T2I_HEAD_WIDTH, False, "gated_residual"),
            FP8_GEMM + REDUCE),
    *_both_dtypes("fp8_activation_quant/token-M128-5120",
                  lambda dtype: _fp8_activation_quant(dtype, Q_DECODE_ROWS, T2I_HIDDEN, None), FP8_QUANT),
    Variant("fp8_activation_quant/token-M1024-17408/bf16",
            lambda: _fp8_activation_quant(torch.bfloat16, Q_BATCH_ROWS, Q_FFN, None), FP8_QUANT),
    Variant("fp8_activation_quant/group-M128-17408/bf16",
            lambda: _fp8_activation_quant(torch.bfloat16, Q_DECODE_ROWS, Q_FFN, 128), FP8_QUANT),
)
CANARY = Variant("canary/branch-shape-mismatch", _branch_shape_canary, ("_canary_kernel",))
VARIANTS_BY_NAME = {v.name: v for v in (*VARIANTS, CANARY)}


# --- compilation ---------------------------------------------------------------------------------------------------

def toolchain_problem() -> str | None:
    """Why this Triton build cannot compile for sm_90 here, or None when it can."""
    try:
        from triton.backends.compiler import GPUTarget
        from triton.backends.nvidia.compiler import get_ptxas
        from triton.compiler.compiler import make_backend
    except ImportError as e:
        return f"Triton or its NVIDIA backend is not importable: {e}"
    try:
        make_backend(GPUTarget("cuda", ARCH, WARP_SIZE))
        ptxas = get_ptxas(ARCH)
    except Exception as e:  # noqa: BLE001 - any failure here means "no toolchain", reported as the skip reason
        return f"cannot create Triton's CUDA backend for sm_{ARCH}: {type(e).__name__}: {e}"
    if ptxas is None:
        return "Triton's ptxas for sm_90 is missing or does not run (set TRITON_PTXAS_BLACKWELL_PATH)"
    return None


@contextlib.contextmanager
def _captured_launches() -> Iterator[list]:
    """While active, ``kernel[grid](*args, **kwargs)`` records ``(kernel, args, kwargs)`` instead of launching."""
    from triton.runtime.jit import JITFunction
    launches: list = []
    real_run = JITFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        launches.append((self, args, kwargs))

    JITFunction.run = record
    try:
        yield launches
    finally:
        JITFunction.run = real_run


@contextlib.contextmanager
def _stderr_into(path: Path) -> Iterator[None]:
    """Redirect file descriptor 2 (MLIR and LLVM diagnostics are written there by C++) into ``path``."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "w") as sink:
        os.dup2(sink.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _ptxas_stat(log: str, pattern: str) -> int | None:
    found = re.search(pattern, log)
    return int(found.group(1)) if found else None


def _mma_version(ttgir: str) -> int | None:
    """The NVIDIA MMA generation the kernel's dots were lowered to (2: mma.sync, 3: Hopper wgmma), None if none."""
    versions = [int(v) for v in re.findall(r"nvidia_mma<\{versionMajor = (\d+)", ttgir)]
    return max(versions) if versions else None


@contextlib.contextmanager
def _env(name: str, value: str):
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def compile_launch(fn, args: tuple, kwargs: dict) -> dict:
    """Compile one recorded launch for sm_90 exactly as the JIT would specialise it; returns its resource use."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", ARCH, WARP_SIZE)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound_args, specialization, options)
    knobs.nvidia.dump_ptxas_log = True  # make_cubin prints ptxas -v: registers and spills
    ptxas_log = io.StringIO()
    start = time.perf_counter()
    # a cache of its own per launch: a specialization another variant compiled (the split-K reduce is shared by
    # every GEMM) would otherwise come from the cache, without a ptxas log to read its registers from
    base = os.environ.get("TRITON_CACHE_DIR") or tempfile.gettempdir()
    with tempfile.TemporaryDirectory(dir=base, prefix="launch-") as own_cache, _env("TRITON_CACHE_DIR", own_cache), \
            contextlib.redirect_stdout(ptxas_log):
        compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                                  options=options.__dict__)
    log = ptxas_log.getvalue()
    return {
        "kernel": fn.__name__,
        "seconds": round(time.perf_counter() - start, 2),
        "signature": {name: kind for name, kind in signature.items() if kind != "constexpr"},
        "constexprs": {fn.arg_names[path[0]]: repr(value) for path, value in constexprs.items()},
        "cubin_bytes": len(compiled.asm["cubin"]),
        "cubin_is_elf": compiled.asm["cubin"][:4] == b"\x7fELF",
        "ptx_targets_sm90": f".target sm_{ARCH}a" in compiled.asm["ptx"],
        "registers": _ptxas_stat(log, r"Used (\d+) registers"),
        "spill_stores": _ptxas_stat(log, r"(\d+) bytes spill stores"),
        "spill_loads": _ptxas_stat(log, r"(\d+) bytes spill loads"),
        "stack_bytes": _ptxas_stat(log, r"(\d+) bytes stack frame"),
        "shared_bytes": compiled.metadata.shared,
        "num_warps": compiled.metadata.num_warps,
        "num_stages": compiled.metadata.num_stages,
        "mma": _mma_version(compiled.asm["ttgir"]),
    }


def _tail(text: str) -> str:
    return text if len(text) <= ERROR_CHARS else "..." + text[-ERROR_CHARS:]


def compile_variant(name: str) -> dict:
    """Run the variant's launcher under capture and compile every launch; never raises."""
    variant = VARIANTS_BY_NAME[name]
    result = {"variant": name, "ok": False, "error": None, "failed_kernel": None, "kernels": [], "warnings": []}
    start = time.perf_counter()
    try:
        with _captured_launches() as launches:
            variant.launch()
    except Exception:  # noqa: BLE001 - reported, the caller decides
        result["error"] = "the launcher raised before any launch:\n" + _tail(traceback.format_exc())
        return result
    launched = tuple(fn.__name__ for fn, _, _ in launches)
    if launched != variant.kernels:
        result["error"] = f"the launcher launched {launched}, expected {variant.kernels}"
        return result
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # Python warnings go to the report, not into the native stderr
        diagnostics = Path(tmp) / "stderr.txt"
        for fn, args, kwargs in launches:
            try:
                with _stderr_into(diagnostics):
                    result["kernels"].append(compile_launch(fn, args, kwargs))
            except Exception as e:  # noqa: BLE001 - the compiler's error is the test's finding
                native = diagnostics.read_text(errors="replace").strip()
                result["failed_kernel"] = fn.__name__
                result["error"] = f"{type(e).__name__}: {_tail(str(e))}" + \
                    (f"\n[compiler stderr]\n{_tail(native)}" if native else "")
                break
        else:
            result["ok"] = True
        result["warnings"] = sorted({str(w.message) for w in caught})
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result


def kernels_in_package() -> list[str]:
    """Every launchable kernel of ``bitdance_rt.kernels``: the @triton.jit functions named ``*_kernel`` (device
    helpers such as ``sign_of`` are compiled inside the kernels that call them)."""
    from triton.runtime.jit import JITFunction
    import bitdance_rt.kernels as package
    found = set()
    for module_info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{module_info.name}")
        found.update(obj.__name__ for obj in vars(module).values()
                     if isinstance(obj, JITFunction) and obj.__name__.endswith("_kernel"))
    return sorted(found)


def run(names: list[str], jobs: int) -> dict:
    problem = toolchain_problem()
    if problem is not None:
        return {"skip": problem}
    start = time.perf_counter()
    if jobs > 1 and len(names) > 1:  # fork: the workers inherit the imports and the replaced cache directory
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("fork")) as pool:
            results = list(pool.map(compile_variant, names))
    else:
        results = [compile_variant(name) for name in names]
    return {"results": results, "kernels_in_package": kernels_in_package(),
            "seconds": round(time.perf_counter() - start, 2)}


def resource_table(results: list[dict]) -> str:
    """One line per compiled kernel: variant, kernel, registers, spills, shared memory, warps, MMA, seconds; then
    the warnings Triton gave while compiling."""
    lines = [f"{'variant':<52} {'kernel':<26} {'regs':>4} {'spill st/ld':>11} {'smem':>7} {'warps':>5} "
             f"{'mma':>3} {'s':>5}"]
    for result in results:
        for k in result["kernels"]:
            spills = f"{k['spill_stores']}/{k['spill_loads']}"
            lines.append(f"{result['variant']:<52} {k['kernel']:<26} {k['registers']!s:>4} {spills:>11} "
                         f"{k['shared_bytes']:>7} {k['num_warps']:>5} {k['mma'] or '-'!s:>3} {k['seconds']:>5}")
        if not result["ok"]:
            lines.append(f"{result['variant']:<52} FAILED ({result['failed_kernel'] or 'launcher'})")
    lines += [f"Triton warned: {message}" for message in sorted({m for r in results for m in r["warnings"]})]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the report here (default: print the table)")
    parser.add_argument("--only", nargs="*", choices=sorted(VARIANTS_BY_NAME), metavar="VARIANT",
                        help="compile these variants (default: every variant of VARIANTS, not the canary)")
    parser.add_argument("--jobs", type=int, default=min(4, len(os.sched_getaffinity(0))),
                        help="worker processes (default: the CPUs available, at most 4)")
    parser.add_argument("--list", action="store_true", help="print the variant names and exit")
    options = parser.parse_args(argv)
    if options.list:
        print("\n".join(VARIANTS_BY_NAME))
        return 0
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("compile_targets: unset TRITON_INTERPRET: kernels decorated under the interpreter cannot be "
              "compiled", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO_ROOT))
    with tempfile.TemporaryDirectory(prefix="triton-sm90-") as cache:
        os.environ["TRITON_CACHE_DIR"] = cache  # every variant really compiles; nothing left in ~/.triton
        report = run(options.only or [v.name for v in VARIANTS], options.jobs)
    if options.json is not None:
        options.json.write_text(json.dumps(report, indent=1))
    elif "skip" in report:
        print(f"skipped: {report['skip']}")
    else:
        print(resource_table(report["results"]))
        for result in report["results"]:
            if not result["ok"]:
                print(f"\n{result['variant']}: {result['error']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
