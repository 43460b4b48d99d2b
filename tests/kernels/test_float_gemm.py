"""``kernels.float_gemm`` (Triton; the interpreter on the CPU) and its epilogues against float64 references:
``F.linear`` (+ bias), ``swiglu_ref`` of it (weight ``[2H, K]``: gate rows then up rows) and ``gated_residual_ref``
(``x + h·gate``, in place into x, with the gate a strided column chunk of a wider adaLN-like output).

Fresh seeded inputs (never zeros); M, N, K not multiples of the tiles (M = 5, 33; N = 70, 130; K = 45, 300) and one of
full tiles; with and without bias; split-K forced to 2 and 3 beside the default (1 off CUDA); strided x rows and
``out``. Outputs poisoned with NaN before each launch (the gated residual's x is a fresh random residual instead, and
the columns around the written slice stay NaN). Tolerance: relative error ``||y − ref|| / ||ref||`` < 1e-5 for
float32 (``FLOAT32_TOL``), 1e-3 for float16 (one float16 rounding), bf16 on a GPU only (1e-2).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_testing import DEVICE, FLOAT32_TOL, ON_GPU, assert_close, poisoned, randn

from bitdance_rt.kernels.float_gemm import float_gemm
from bitdance_rt.reference.head_ops import gated_residual_ref, swiglu_ref

DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16"),
          pytest.param(torch.bfloat16, id="bf16", marks=pytest.mark.skipif(
              not ON_GPU, reason="bf16 kernels are tested on a GPU only: Triton's interpreter mishandles bf16"))]
TOLERANCE = {torch.float32: FLOAT32_TOL, torch.float16: 1e-3, torch.bfloat16: 1e-2}
SHAPES = [(5, 70, 45), (33, 130, 300), (64, 128, 128)]
SPLITS = [pytest.param(None, True, id="default-bias"), pytest.param(2, False, id="split2"),
          pytest.param(3, True, id="split3-bias")]


def operands(m: int, n: int, k: int, seed: int, dtype: torch.dtype, bias: bool):
    x = randn(m, k, seed=seed, dtype=dtype)
    w = randn(n, k, seed=seed + 1, dtype=dtype, scale=k ** -0.5)
    b = randn(n, seed=seed + 2, dtype=dtype, scale=0.5) if bias else None
    return x, w, b


def lin64(x, w, b):
    return F.linear(x.cpu().double(), w.cpu().double(), None if b is None else b.cpu().double())


def skip_if_too_few_steps(k: int, split_k, dtype) -> None:
    block_k = 32 if dtype == torch.float32 else 64
    if split_k is not None and split_k > -(-k // block_k):
        pytest.skip(f"K = {k} has fewer than {split_k} steps of {block_k}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("split_k,bias", SPLITS)
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_bias(m, n, k, split_k, bias, dtype):
    skip_if_too_few_steps(k, split_k, dtype)
    x, w, b = operands(m, n, k, seed=m + n + k, dtype=dtype, bias=bias)
    out = poisoned(m, n, dtype=dtype)
    y = float_gemm(x, w, b, out=out, split_k=split_k)
    assert y is out
    assert_close(y, lin64(x, w, b), TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("split_k,bias", SPLITS)
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_swiglu(m, n, k, split_k, bias, dtype):
    """Weight [2n, k] (gate rows, then up rows) -> [m, n] = silu(gate)·up, as ``swiglu_ref`` of the linear."""
    skip_if_too_few_steps(k, split_k, dtype)
    x, w, b = operands(m, 2 * n, k, seed=m + n + k + 7, dtype=dtype, bias=bias)
    out = poisoned(m, n, dtype=dtype)
    y = float_gemm(x, w, b, out=out, split_k=split_k, epilogue="swiglu")
    assert y is out
    assert_close(y, swiglu_ref(lin64(x, w, b)), TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("split_k,bias", SPLITS)
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_gated_residual_with_a_strided_gate(m, n, k, split_k, bias, dtype):
    """x [m, n] += gate · (h @ wᵀ + b), gate = columns [n, 2n) of an adaLN-like [m, 3n] output."""
    skip_if_too_few_steps(k, split_k, dtype)
    h, w, b = operands(m, n, k, seed=m + n + k + 11, dtype=dtype, bias=bias)
    mods = randn(m, 3 * n, seed=m + 3, dtype=dtype)
    gate = mods[:, n:2 * n]
    x = randn(m, n, seed=m + 4, dtype=dtype)
    want = gated_residual_ref(x.cpu().double(), lin64(h, w, b), gate.cpu().double())
    y = float_gemm(h, w, b, out=x, split_k=split_k, epilogue="gated_residual", gate=gate)
    assert y is x
    assert_close(x, want, TOLERANCE[dtype])


def test_split_k_is_deterministic_and_close_to_unsplit():
    x, w, b = operands(16, 96, 256, seed=41, dtype=torch.float32, bias=True)
    whole = float_gemm(x, w, b, split_k=1)
    split = [float_gemm(x, w, b, split_k=4) for _ in range(2)]
    assert torch.equal(split[0], split[1])
    assert_close(split[0], whole.double(), FLOAT32_TOL)


def test_strided_rows_and_out():
    wide = randn(9, 400, seed=42)
    x = wide[:, 50:350]
    _, w, b = operands(9, 200, 300, seed=43, dtype=torch.float32, bias=True)
    out_wide = poisoned(9, 260)
    y = float_gemm(x, w, b, out=out_wide[:, 30:230], split_k=2)
    assert_close(y, lin64(x, w, b), FLOAT32_TOL)
    assert torch.isnan(out_wide[:, :30]).all() and torch.isnan(out_wide[:, 230:]).all()


def test_empty_and_k_zero():
    _, w, b = operands(3, 64, 32, seed=44, dtype=torch.float32, bias=True)
    assert float_gemm(torch.empty(0, 32, device=DEVICE), w, b).shape == (0, 64)
    y = float_gemm(torch.empty(3, 0, device=DEVICE), torch.empty(64, 0, device=DEVICE), b)
    assert torch.equal(y, b.expand(3, 64))
    sw = float_gemm(torch.empty(3, 0, device=DEVICE), torch.empty(64, 0, device=DEVICE), b, epilogue="swiglu")
    assert_close(sw, swiglu_ref(b.double().expand(3, 64)), FLOAT32_TOL)


def test_argument_errors():
    x, w, b = operands(4, 64, 32, seed=45, dtype=torch.float32, bias=True)
    with pytest.raises(ValueError, match=r"float_gemm: weight has shape \[64, 32\], expected \[\*, 31\]"):
        float_gemm(x[:, :31], w)
    with pytest.raises(ValueError, match="float_gemm: weight has dtype torch.float16, expected torch.float32"):
        float_gemm(x, w.half())
    with pytest.raises(ValueError, match="float_gemm: weight must be contiguous"):
        float_gemm(x, w.t().contiguous().t())
    with pytest.raises(ValueError, match=r"float_gemm: bias has shape \[32\], expected \[64\]"):
        float_gemm(x, w, b[:32])
    with pytest.raises(ValueError, match="float_gemm: epilogue must be one of"):
        float_gemm(x, w, epilogue="gelu")
    with pytest.raises(ValueError, match="float_gemm: the SwiGLU epilogue needs a weight of 2H rows"):
        float_gemm(x, w[:63], epilogue="swiglu")
    with pytest.raises(ValueError, match="float_gemm: the gated_residual epilogue updates the residual stream"):
        float_gemm(x, w, epilogue="gated_residual")
    with pytest.raises(ValueError, match=r"float_gemm: gate has shape \[4, 32\], expected \[4, 64\]"):
        float_gemm(x, w, out=torch.zeros(4, 64), epilogue="gated_residual", gate=torch.zeros(4, 32))
    with pytest.raises(ValueError, match="float_gemm: gate has channel stride 2"):
        float_gemm(x, w, out=torch.zeros(4, 64), epilogue="gated_residual", gate=torch.zeros(4, 128)[:, ::2])
    with pytest.raises(ValueError, match="gate is used by the gated_residual epilogue only"):
        float_gemm(x, w, gate=torch.zeros(4, 64))
    with pytest.raises(ValueError, match="float_gemm: split_k must be an int from 1 to 1"):
        float_gemm(x, w, split_k=2)
