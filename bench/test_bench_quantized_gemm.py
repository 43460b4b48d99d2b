"""Microbenchmarks of the 8-bit-weight GEMMs (issue 12) on a CUDA GPU, beside bf16 ``F.linear`` and
``torch._scaled_mm`` on the same shapes.

Rows: the 14B model's linears (bench/shapes.py, bench/model_shapes.py: hidden 5,120, SwiGLU 17,408, 40 query and 8
KV heads of 128; head width 5,120, SwiGLU 7,680) with the engine's fusions: backbone q/k/v (7,168 × 5,120),
o_proj (5,120 × 5,120), gate/up (34,816 × 5,120), down (5,120 × 17,408); head wqkv and w1 (15,360 × 5,120), w2
(5,120 × 7,680), one adaLN linear (30,720 × 5,120). M = 128 rows (the decode block: 2 guidance rows × P = 64, and
the head's 128 tokens) and 1,024 rows (a batch of 8 images).

- ``int8_weight_gemm``: bf16 activations, int8 weights per channel (any CUDA GPU); beside ``bf16_linear``.
- ``fp8_gemm`` (compute capability >= 8.9): pre-quantized e4m3 activations × e4m3 weights, per token × per channel
  and per 1×128 group × per 128×128 block; beside ``bf16_linear`` and, per token × per channel, ``scaled_mm``
  (``torch._scaled_mm``, row-wise scales).
- ``fp8_linear``: the whole layer as the engine would run it (``fast_linear.quantized_linear``: activation
  quantization + GEMM) with the Triton GEMM, beside ``scaled_mm_linear`` (same quantizer, ``torch._scaled_mm``) and
  ``bf16_linear``.
- ``fp8_activation_quant``: per token and per group on 128 and 1,024 rows of 5,120 and 17,408 channels.

``extra_info`` (``floors.record_row``): graphed times of ours (``ours_s``) and each candidate (``<name>_s``), our
eager time, the bytes moved (8-bit weights, activations, outputs, scales), the floor and ``ours_over_floor``. For fp8
rows ``flops`` is bf16-equivalent (2·M·N·K scaled by the measured bf16 / fp8 matrix rates, ``fp8_rate`` in
``extra_info``) so the floor uses the fp8 rate. Speed goals (issue 12, measured elsewhere): W8A8 1.4-1.6x faster
than bf16 at 128 rows; weight-only int8 below bf16's time where the GEMM is weight-bound.
"""

from __future__ import annotations

import functools

import floors
import pytest
import torch
import torch.nn.functional as F
from model_shapes import QWEN3_14B
from shapes import T2I_14B, T2I_HEAD_TOKENS

from bitdance_rt.quantization.fast_linear import quantized_linear
from bitdance_rt.quantization.quantized_weight import quantize_fp8, quantize_int8

HIDDEN, FFN = T2I_14B["hidden"], QWEN3_14B["intermediate"]
QKV = (T2I_14B["q_heads"] + 2 * T2I_14B["kv_heads"]) * T2I_14B["head_dim"]
HEAD, HEAD_FFN = T2I_14B["head_width"], int(1.5 * T2I_14B["head_width"])
LINEARS = {  # name: (N, K)
    "bb_qkv": (QKV, HIDDEN), "bb_o": (HIDDEN, HIDDEN), "bb_gate_up": (2 * FFN, HIDDEN), "bb_down": (HIDDEN, FFN),
    "head_wqkv_w1": (3 * HEAD, HEAD), "head_w2": (HEAD, HEAD_FFN), "head_adaln": (6 * HEAD, HEAD),
}
ROWS = (T2I_HEAD_TOKENS, 1024)
CASES = [pytest.param(name, m, id=f"{name}-M{m}") for name in LINEARS for m in ROWS]


def fp8_capable() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


needs_fp8 = pytest.mark.skipif(not fp8_capable(), reason="fp8 tensor cores need compute capability >= 8.9")


@functools.lru_cache(maxsize=None)
def fp8_rate() -> float:
    """e4m3 FLOP/s of an 8192^3 ``torch._scaled_mm`` (row-wise scales, bf16 out) on random data."""
    n = 8192
    a = floors.cuda_randn(n, n, seed=90).to(torch.float8_e4m3fn)
    b = floors.cuda_randn(n, n, seed=91).to(torch.float8_e4m3fn)
    sa, sb = torch.ones(n, 1, device="cuda"), torch.ones(1, n, device="cuda")
    return 2 * n ** 3 / floors.time_cuda(lambda: torch._scaled_mm(a, b.t(), sa, sb, out_dtype=torch.bfloat16))


def operands(name: str, m: int):
    n, k = LINEARS[name]
    x = floors.cuda_randn(m, k, seed=1)
    w = floors.cuda_randn(n, k, seed=2, scale=k ** -0.5)
    return x, w


@pytest.mark.parametrize("name,m", CASES)
def test_bench_int8_weight_gemm(benchmark, name, m):
    from bitdance_rt.kernels.int8_weight_gemm import int8_weight_gemm
    x, w = operands(name, m)
    n, k = w.shape
    qw = quantize_int8(w)
    out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
    benchmark.extra_info["splits"] = "rule"
    floors.record_row(benchmark, lambda: int8_weight_gemm(x, qw.data, qw.scales, out=out),
                      {"bf16_linear": lambda: F.linear(x, w)},
                      bytes_moved=n * k + 4 * n + 2 * m * k + 2 * m * n, flops=2 * m * n * k)


@needs_fp8
@pytest.mark.parametrize("layout", ["token-channel", "group-block"])
@pytest.mark.parametrize("name,m", CASES)
def test_bench_fp8_gemm(benchmark, name, m, layout):
    from bitdance_rt.kernels.fp8_activation_quant import fp8_activation_quant
    from bitdance_rt.kernels.fp8_gemm import fp8_gemm
    from bitdance_rt.quantization.scaled_mm import fp8_gemm_scaled_mm
    x, w = operands(name, m)
    n, k = w.shape
    grouped = layout == "group-block"
    qw = quantize_fp8(w, 128 if grouped else None)
    codes, scales = fp8_activation_quant(x, 128 if grouped else None)
    out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
    candidates = {"bf16_linear": lambda: F.linear(x, w)}
    if not grouped:
        candidates["scaled_mm"] = lambda: fp8_gemm_scaled_mm(codes, scales, qw, out_dtype=torch.bfloat16)
    benchmark.extra_info["fp8_rate"] = fp8_rate()
    floors.record_row(benchmark, lambda: fp8_gemm(codes, scales, qw.data, qw.scales, out=out), candidates,
                      bytes_moved=n * k + m * k + 2 * m * n + 4 * (scales.numel() + qw.scales.numel()),
                      flops=2 * m * n * k * floors.matmul_rate() / fp8_rate())


@needs_fp8
@pytest.mark.parametrize("name,m", CASES)
def test_bench_fp8_linear(benchmark, name, m):
    x, w = operands(name, m)
    n, k = w.shape
    qw = quantize_fp8(w)
    benchmark.extra_info["fp8_rate"] = fp8_rate()
    floors.record_row(benchmark, lambda: quantized_linear(x, qw, act_quant="token"),
                      {"scaled_mm_linear": lambda: quantized_linear(x, qw, act_quant="token", gemm="scaled_mm"),
                       "bf16_linear": lambda: F.linear(x, w)},
                      bytes_moved=n * k + 4 * n + 2 * m * k + m * k + 2 * m * n,
                      flops=2 * m * n * k * floors.matmul_rate() / fp8_rate())


@pytest.mark.parametrize("group_size", [None, 128], ids=["token", "group128"])
@pytest.mark.parametrize("m,k", [(m, k) for m in ROWS for k in (HIDDEN, FFN)])
def test_bench_fp8_activation_quant(benchmark, m, k, group_size):
    from bitdance_rt.kernels.fp8_activation_quant import fp8_activation_quant
    from bitdance_rt.quantization.reference_linear import fp8_activation_quant_reference
    x = floors.cuda_randn(m, k, seed=3)
    codes = torch.empty(m, k, dtype=torch.float8_e4m3fn, device="cuda")
    scales = torch.empty((m,) if group_size is None else (m, -(-k // 128)), device="cuda")
    floors.record_row(benchmark, lambda: fp8_activation_quant(x, group_size, codes=codes, scales=scales),
                      {"reference": lambda: fp8_activation_quant_reference(x, group_size)},
                      bytes_moved=2 * m * k + m * k + 4 * scales.numel())
