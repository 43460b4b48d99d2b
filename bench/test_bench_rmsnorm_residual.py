"""Microbenchmarks of RMSNorm with fused residual add (bf16 on a CUDA GPU) beside the unfused PyTorch reference
(``x + residual``, then the norm) on the same inputs.

Rows (bench/shapes.py): the 14B backbone's decode block, 128 tokens (2 guidance rows × P = 64) of 5,120 in the HF
style; the class-conditional B/L/H backbones at 512 rows × P tokens (P = 1, 4, 16) of 768 / 1,024 / 1,280 in the
``torch.nn.RMSNorm`` style. ``extra_info`` holds CUDA-event times of back-to-back calls (GPU time) of ours
(``ours_s``) and the reference (``reference_s``), the bytes of one call (x, residual and weight read; y and the new
residual written), the memory floor (``floor_s``), ``ours_over_floor`` and the GPU environment; pytest-benchmark
times ours, each round synchronised.
"""

from __future__ import annotations

import floors
import pytest
import torch
from shapes import C2I_PARALLEL, C2I_ROWS, C2I_SIZES, T2I_14B, T2I_DECODE

from bitdance_rt.kernels.rmsnorm_residual import rmsnorm_residual
from bitdance_rt.reference.pre_attention import rmsnorm_residual_reference

DTYPE = torch.bfloat16
ELEMENT = 2  # bytes per bf16 element
EPS = 1e-6

T2I_BLOCK_TOKENS = T2I_DECODE[0][0] * T2I_DECODE[0][1]  # 2 guidance rows x P = 64

SHAPES = {  # name: (rows, hidden, style)
    "t2i14b_decode": (T2I_BLOCK_TOKENS, T2I_14B["hidden"], "hf"),
    **{f"c2i{size}_p{p}": (C2I_ROWS * p, dim, "torch") for size, (dim, _, _) in C2I_SIZES.items()
       for p in C2I_PARALLEL},
}




@pytest.mark.parametrize("shape", list(SHAPES))
def test_bench_rmsnorm_residual(benchmark, shape):
    rows, hidden, style = SHAPES[shape]
    x, residual = floors.cuda_randn(rows, hidden, seed=0), floors.cuda_randn(rows, hidden, seed=1)
    weight = 1 + 0.1 * floors.cuda_randn(hidden, seed=2)
    out, residual_out = torch.empty_like(x), torch.empty_like(x)

    def ours():
        rmsnorm_residual(x, residual, weight, EPS, style=style, out=out, residual_out=residual_out)

    def reference():
        return rmsnorm_residual_reference(x, residual, weight, EPS, style)

    floors.record_row(benchmark, ours, {"reference": reference}, ELEMENT * (4 * rows * hidden + hidden))
