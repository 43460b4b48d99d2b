"""``kernels.int8_weight_gemm`` (Triton; the interpreter on the CPU) against ``int8_weight_gemm_reference`` computed in
float64 (x and the dequantized weight in float64, then the matmul).

Fresh seeded inputs; weights quantized by ``quantize_int8`` from rows of different magnitudes; shapes whose M, N and K
leave partial tiles (M = 5, 33; N = 200, 130; K = 300, 96) and one of full tiles; with and without bias; split-K
forced to 2 and 3 K ranges beside the tile rule's choice; x rows strided inside a wider tensor and a strided ``out``.
Outputs are poisoned with NaN before each launch. Tolerances (relative error ``||y − ref|| / ||ref||``): 1e-5 for
float32 (measured about 1.5e-7), 1e-3 for float16 (one float16 rounding of the output, measured about 2e-4), 1e-2 for
bf16 (GPU only: the interpreter mishandles bf16).
"""

from __future__ import annotations

import pytest
import torch
from quant_testing import DEVICE, FLOAT32_TOL, ON_GPU, assert_close, poisoned, randn

from bitdance_rt.kernels._gemm_tiles import gemm_tiles
from bitdance_rt.kernels.int8_weight_gemm import int8_weight_gemm
from bitdance_rt.quantization.quantized_weight import quantize_int8
from bitdance_rt.quantization.reference_linear import int8_weight_gemm_reference

X_DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16"),
            pytest.param(torch.bfloat16, id="bf16", marks=pytest.mark.skipif(
                not ON_GPU, reason="bf16 kernels are tested on a GPU only: Triton's interpreter mishandles bf16"))]
TOLERANCE = {torch.float32: FLOAT32_TOL, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def case(m: int, n: int, k: int, seed: int, dtype: torch.dtype, bias: bool):
    x = randn(m, k, seed=seed, dtype=dtype)
    w = randn(n, k, seed=seed + 1, device="cpu") * torch.logspace(-1, 1, n)[:, None]
    qw = quantize_int8(w).to(DEVICE)
    b = randn(n, seed=seed + 2, dtype=dtype, scale=0.5) if bias else None
    return x, qw, b


def reference(x: torch.Tensor, qw, bias: torch.Tensor | None) -> torch.Tensor:
    return int8_weight_gemm_reference(x.cpu().double(), qw.to("cpu"), None if bias is None else bias.cpu().double())


@pytest.mark.parametrize("dtype", X_DTYPES)
@pytest.mark.parametrize("split_k,bias", [(None, True), (2, False), (3, True)],
                         ids=["rule-bias", "split2", "split3-bias"])
@pytest.mark.parametrize("m,n,k", [(5, 200, 300), (33, 130, 96), (64, 256, 256)])
def test_int8_weight_gemm(m, n, k, split_k, bias, dtype):
    x, qw, b = case(m, n, k, seed=m + n + k, dtype=dtype, bias=bias)
    out = poisoned(m, n, dtype=dtype)
    block_k = 32 if dtype == torch.float32 else 128
    if split_k is not None and split_k > -(-k // block_k):
        pytest.skip(f"K = {k} has fewer than {split_k} steps of {block_k}")
    y = int8_weight_gemm(x, qw.data, qw.scales, b, out=out, split_k=split_k)
    assert y is out
    assert_close(y, reference(x, qw, b), TOLERANCE[dtype])


def test_split_k_is_deterministic_and_close_to_unsplit():
    x, qw, b = case(16, 256, 256, seed=21, dtype=torch.float32, bias=True)
    whole = int8_weight_gemm(x, qw.data, qw.scales, b, split_k=1)
    split = [int8_weight_gemm(x, qw.data, qw.scales, b, split_k=4) for _ in range(2)]
    assert torch.equal(split[0], split[1])
    assert_close(split[0], whole.double(), FLOAT32_TOL)


def test_strided_rows_and_out():
    wide = randn(9, 400, seed=22)
    x = wide[:, 50:350]
    _, qw, b = case(9, 200, 300, seed=23, dtype=torch.float32, bias=True)
    out_wide = poisoned(9, 260)
    y = int8_weight_gemm(x, qw.data, qw.scales, b, out=out_wide[:, 30:230])
    assert_close(y, reference(x, qw, b), FLOAT32_TOL)
    assert torch.isnan(out_wide[:, :30]).all() and torch.isnan(out_wide[:, 230:]).all()


def test_empty_and_k_zero():
    _, qw, b = case(3, 64, 32, seed=24, dtype=torch.float32, bias=True)
    assert int8_weight_gemm(torch.empty(0, 32, device=DEVICE), qw.data, qw.scales, b).shape == (0, 64)
    y = int8_weight_gemm(torch.empty(3, 0, device=DEVICE), torch.empty(64, 0, dtype=torch.int8, device=DEVICE),
                         qw.scales, b)
    assert torch.equal(y, b.expand(3, 64))


def test_tile_rule():
    """M <= 128 rows use the next power of two (>= 16); the 14B decode shapes split K where the tiles leave SMs
    idle, never into more ranges than K steps and never with an empty range."""
    cpu = torch.device("cpu")
    rule = [(m, gemm_tiles(m, 5120, 5120, block_k=128, x_bytes=2, w_bytes=1, device=cpu)) for m in (1, 20, 128)]
    assert [(m, t.block_m) for m, t in rule] == [(1, 16), (20, 32), (128, 128)]
    assert rule[2][1].splits == 3 and rule[2][1].k_per_split == 14 * 128
    assert gemm_tiles(1024, 5120, 5120, block_k=128, x_bytes=2, w_bytes=1, device=cpu).splits == 1
    assert gemm_tiles(128, 34816, 5120, block_k=128, x_bytes=2, w_bytes=1, device=cpu).splits == 1
    forced = gemm_tiles(16, 64, 300, block_k=128, x_bytes=4, w_bytes=1, device=cpu, splits=3)
    assert forced.splits == 3 and forced.k_per_split == 128
    odd = gemm_tiles(16, 64, 5 * 128, block_k=128, x_bytes=4, w_bytes=1, device=cpu, splits=4)
    assert odd.splits == 3 and odd.k_per_split == 256  # 5 steps in ranges of 2: the 4th range would be empty


def test_argument_errors():
    x, qw, b = case(4, 64, 32, seed=25, dtype=torch.float32, bias=True)
    with pytest.raises(ValueError, match=r"weight has shape \[64, 32\], expected \[\*, 31\]"):
        int8_weight_gemm(x[:, :31], qw.data, qw.scales)
    with pytest.raises(ValueError, match="weight has dtype torch.float32, expected torch.int8"):
        int8_weight_gemm(x, qw.data.float(), qw.scales)
    with pytest.raises(ValueError, match=r"scales has shape \[63\], expected \[64\]"):
        int8_weight_gemm(x, qw.data, qw.scales[:63])
    with pytest.raises(ValueError, match=r"bias has shape \[32\]"):
        int8_weight_gemm(x, qw.data, qw.scales, b[:32])
    with pytest.raises(ValueError, match="x has dtype torch.float64"):
        int8_weight_gemm(x.double(), qw.data, qw.scales)
    with pytest.raises(ValueError, match="split_k must be an int from 1 to 1"):
        int8_weight_gemm(x, qw.data, qw.scales, split_k=2)


@pytest.mark.parametrize("split_k,bias", [(None, True), (2, False), (3, True)],
                         ids=["rule-bias", "split2", "split3-bias"])
@pytest.mark.parametrize("m,h,k", [(5, 100, 300), (33, 65, 96)])
def test_int8_swiglu_epilogue(m, h, k, split_k, bias):
    """Weight [2h, k] (gate rows, then up rows) -> silu(gate)·up [m, h], float32, against ``swiglu_ref`` of the
    float64 reference (tolerance 1e-5)."""
    from bitdance_rt.reference.head_ops import swiglu_ref
    x, qw, b = case(m, 2 * h, k, seed=m + h + k + 50, dtype=torch.float32, bias=bias)
    out = poisoned(m, h)
    y = int8_weight_gemm(x, qw.data, qw.scales, b, out=out, split_k=split_k, epilogue="swiglu")
    assert y is out
    assert_close(y, swiglu_ref(reference(x, qw, b)), FLOAT32_TOL)


@pytest.mark.parametrize("split_k,bias", [(None, True), (2, False), (3, True)],
                         ids=["rule-bias", "split2", "split3-bias"])
@pytest.mark.parametrize("m,n,k", [(5, 200, 300), (33, 130, 96)])
def test_int8_gated_residual_epilogue(m, n, k, split_k, bias):
    """x [m, n] += gate·(h @ Wᵀ + b) in place, gate a strided column chunk of an [m, 3n] adaLN-like output;
    float32 against ``gated_residual_ref`` of the float64 reference (tolerance 1e-5)."""
    from bitdance_rt.reference.head_ops import gated_residual_ref
    h, qw, b = case(m, n, k, seed=m + n + k + 60, dtype=torch.float32, bias=bias)
    gate = randn(m, 3 * n, seed=m + 61)[:, n:2 * n]
    x = randn(m, n, seed=m + 62)
    want = gated_residual_ref(x.cpu().double(), reference(h, qw, b), gate.cpu().double())
    y = int8_weight_gemm(h, qw.data, qw.scales, b, out=x, split_k=split_k, epilogue="gated_residual", gate=gate)
    assert y is x
    assert_close(x, want, FLOAT32_TOL)
