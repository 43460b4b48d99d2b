"""``kernels.fp8_gemm`` (Triton; the interpreter on the CPU, whose e4m3 dot is exact: it multiplies the decoded
values) against ``fp8_gemm_reference`` computed in float64 (codes times scales, then the matmul).

All four scale layouts: per-token or per-1×128-group activations × per-channel or per-128×128-block weights; codes
made by ``fp8_activation_quant_reference`` and ``quantize_fp8`` from fresh seeded inputs of different magnitudes per
row; shapes leaving partial tiles in M, N and K (K = 300: a partial last 128-group; N = 200: a partial last weight
block) and one of full tiles; with and without bias; split-K forced to 2 and 3 beside the tile rule's choice;
strided activation rows and ``out``. Outputs are poisoned with NaN before each launch. Tolerances (relative error
``||y − ref|| / ||ref||``): 1e-5 for float32 outputs (measured about 6e-8), 1e-3 for float16 outputs (one float16
rounding), 1e-2 for bf16 outputs (GPU only). The e4m3 tensor-core path itself (Hopper wgmma) runs on a GPU only.
"""

from __future__ import annotations

import pytest
import torch
from quant_testing import DEVICE, FLOAT32_TOL, ON_GPU, assert_close, poisoned, randn

from bitdance_rt.kernels.fp8_gemm import fp8_gemm
from bitdance_rt.quantization.quantized_weight import quantize_fp8
from bitdance_rt.quantization.reference_linear import fp8_activation_quant_reference, fp8_gemm_reference

OUT_DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16"),
              pytest.param(torch.bfloat16, id="bf16", marks=pytest.mark.skipif(
                  not ON_GPU, reason="bf16 outputs are tested on a GPU only: Triton's interpreter mishandles bf16"))]
TOLERANCE = {torch.float32: FLOAT32_TOL, torch.float16: 1e-3, torch.bfloat16: 1e-2}
LAYOUTS = [pytest.param(g, b, id=f"{'group' if g else 'token'}-{'block' if b else 'channel'}")
           for g in (None, 128) for b in (None, 128)]


def case(m: int, n: int, k: int, seed: int, group_size, block, bias: bool):
    x = randn(m, k, seed=seed, device="cpu") * torch.logspace(-2, 1, m)[:, None]
    codes, scales = fp8_activation_quant_reference(x, group_size)
    w = randn(n, k, seed=seed + 1, device="cpu") * torch.logspace(-1, 1, n)[:, None]
    qw = quantize_fp8(w, block)
    b = randn(n, seed=seed + 2, scale=0.5) if bias else None
    return codes.to(DEVICE), scales.to(DEVICE), qw.to(DEVICE), b


def reference(codes, scales, qw, bias) -> torch.Tensor:
    return fp8_gemm_reference(codes.cpu(), scales.cpu(), qw.to("cpu"), None if bias is None else bias.cpu(),
                              out_dtype=torch.float64, compute_dtype=torch.float64)


@pytest.mark.parametrize("split_k,bias", [(None, True), (2, False), (3, True)],
                         ids=["rule-bias", "split2", "split3-bias"])
@pytest.mark.parametrize("group_size,block", LAYOUTS)
@pytest.mark.parametrize("m,n,k", [(5, 200, 300), (33, 256, 384)])
def test_fp8_gemm_float32(m, n, k, group_size, block, split_k, bias):
    codes, scales, qw, b = case(m, n, k, seed=m + n + k, group_size=group_size, block=block, bias=bias)
    out = poisoned(m, n)
    y = fp8_gemm(codes, scales, qw.data, qw.scales, b, out=out, split_k=split_k)
    assert y is out
    assert_close(y, reference(codes, scales, qw, b), FLOAT32_TOL)


@pytest.mark.parametrize("out_dtype", OUT_DTYPES)
@pytest.mark.parametrize("group_size,block", LAYOUTS)
def test_fp8_gemm_output_dtypes(group_size, block, out_dtype):
    codes, scales, qw, b = case(17, 200, 300, seed=31, group_size=group_size, block=block, bias=True)
    b = b.to(out_dtype)
    out = poisoned(17, 200, dtype=out_dtype)
    y = fp8_gemm(codes, scales, qw.data, qw.scales, b, out=out)
    assert_close(y, reference(codes, scales, qw, b), TOLERANCE[out_dtype])
    fresh = fp8_gemm(codes, scales, qw.data, qw.scales, b, out_dtype=out_dtype)
    assert fresh.dtype == out_dtype and torch.equal(fresh, y)


def test_split_k_is_deterministic_and_close_to_unsplit():
    codes, scales, qw, b = case(16, 256, 640, seed=32, group_size=128, block=128, bias=True)
    whole = fp8_gemm(codes, scales, qw.data, qw.scales, b, out_dtype=torch.float32, split_k=1)
    split = [fp8_gemm(codes, scales, qw.data, qw.scales, b, out_dtype=torch.float32, split_k=5) for _ in range(2)]
    assert torch.equal(split[0], split[1])
    assert_close(split[0], whole.double(), FLOAT32_TOL)


def test_strided_rows_and_out():
    codes, scales, qw, b = case(9, 200, 300, seed=33, group_size=None, block=None, bias=True)
    wide = torch.zeros(9, 400, dtype=codes.dtype, device=DEVICE)
    wide[:, 40:340] = codes
    out_wide = poisoned(9, 260)
    y = fp8_gemm(wide[:, 40:340], scales, qw.data, qw.scales, b, out=out_wide[:, 30:230])
    assert_close(y, reference(codes, scales, qw, b), FLOAT32_TOL)
    assert torch.isnan(out_wide[:, :30]).all() and torch.isnan(out_wide[:, 230:]).all()


def test_argument_errors():
    codes, scales, qw, b = case(4, 200, 300, seed=34, group_size=None, block=128, bias=True)
    with pytest.raises(ValueError, match=r"a_scales has shape \[4, 2\], expected \[4\] \(per token\) or \[4, 3\]"):
        fp8_gemm(codes, torch.ones(4, 2, device=DEVICE), qw.data, qw.scales)
    with pytest.raises(ValueError, match=r"w_scales has shape \[2, 2\], expected \[200\] .* or \[2, 3\]"):
        fp8_gemm(codes, scales, qw.data, torch.ones(2, 2, device=DEVICE))
    with pytest.raises(ValueError, match="a has dtype torch.float32, expected torch.float8_e4m3fn"):
        fp8_gemm(codes.float(), scales, qw.data, qw.scales)
    with pytest.raises(ValueError, match=r"weight has shape \[200, 300\], expected \[\*, 256\]"):
        fp8_gemm(codes[:, :256], scales, qw.data, qw.scales)
    with pytest.raises(ValueError, match="out_dtype must be one of"):
        fp8_gemm(codes, scales, qw.data, qw.scales, out_dtype=torch.float64)
    with pytest.raises(ValueError, match="split_k must be an int from 1 to 3"):
        fp8_gemm(codes, scales, qw.data, qw.scales, split_k=4)


@pytest.mark.parametrize("split_k,bias", [(None, True), (2, False)], ids=["rule-bias", "split2"])
@pytest.mark.parametrize("group_size,block", LAYOUTS)
def test_fp8_swiglu_epilogue(group_size, block, split_k, bias):
    """Weight [2h, k] (gate rows, then up rows; h = 100: the up rows start inside a 128-row scale block) ->
    silu(gate)·up [m, h], float32 output, against ``swiglu_ref`` of the float64 reference (tolerance 1e-5)."""
    from bitdance_rt.reference.head_ops import swiglu_ref
    codes, scales, qw, b = case(9, 200, 300, seed=70, group_size=group_size, block=block, bias=bias)
    out = poisoned(9, 100)
    y = fp8_gemm(codes, scales, qw.data, qw.scales, b, out=out, split_k=split_k, epilogue="swiglu")
    assert y is out
    assert_close(y, swiglu_ref(reference(codes, scales, qw, b)), FLOAT32_TOL)


@pytest.mark.parametrize("split_k,bias", [(None, True), (2, False)], ids=["rule-bias", "split2"])
@pytest.mark.parametrize("group_size,block", LAYOUTS)
def test_fp8_gated_residual_epilogue(group_size, block, split_k, bias):
    """x [m, n] += gate·(A @ Wᵀ + b) in place, gate a strided column chunk of an [m, 3n] adaLN-like output; float32
    against ``gated_residual_ref`` of the float64 reference (tolerance 1e-5)."""
    from bitdance_rt.reference.head_ops import gated_residual_ref
    codes, scales, qw, b = case(9, 200, 300, seed=71, group_size=group_size, block=block, bias=bias)
    gate = randn(9, 600, seed=72)[:, 200:400]
    x = randn(9, 200, seed=73)
    want = gated_residual_ref(x.cpu().double(), reference(codes, scales, qw, b), gate.cpu().double())
    y = fp8_gemm(codes, scales, qw.data, qw.scales, b, out=x, split_k=split_k, epilogue="gated_residual", gate=gate)
    assert y is x
    assert_close(x, want, FLOAT32_TOL)
