"""The fused-epilogue linears of the dispatcher (``float_linear``, ``linear_swiglu``, ``linear_gated_residual``), the
engine's ``engine/linear.py`` on top of them, and the ours-vs-cuBLAS choice (``ops/gemm_choice.py``).

Triton provider against the PyTorch provider (the references: ``F.linear`` or ``quantized_linear_reference``, then
``swiglu_ref`` / ``gated_residual_ref``) on fresh random float32 inputs, with float and int8 weights (fp8: the
weights' own tests, ``tests/quantization/test_fp8_gemm.py``) and a gate that is a strided column chunk of a wider
adaLN-like output; relative error < 1e-5 (float32 through the interpreter); outputs start NaN-free only where an
input requires it (the residual x), and any NaN fails. The choice: the empty table means cuBLAS for every float
weight; a filled table is read by M bucket; the mode is checked.
"""

from __future__ import annotations

import os

import pytest
import torch

from bitdance_rt.engine import linear as engine_linear
from bitdance_rt.errors import InvalidRequestError
from bitdance_rt.ops import OpSet
from bitdance_rt.ops.gemm_choice import MEASURED, choice_for, m_bucket, measured_choice
from bitdance_rt.quantization.quantized_weight import quantize_int8

DEVICE = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
TRITON_HERE = DEVICE.type == "cuda" or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
TOL = 1e-5


def randn(*shape, seed, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(DEVICE, torch.float32)


def close(a, b, tol=TOL):
    a64, b64 = a.double().cpu(), b.double().cpu()
    assert torch.isfinite(a64).all() and torch.isfinite(b64).all()
    err = ((a64 - b64).norm() / b64.norm().clamp_min(1e-30)).item()
    assert err < tol, f"relative error {err:.2e}"


@pytest.fixture(scope="module")
def both():
    if not TRITON_HERE:
        pytest.skip("Triton runs on CUDA or under TRITON_INTERPRET=1")
    return OpSet(DEVICE, "torch"), OpSet(DEVICE, ("triton",), float_gemm="ours")


def weight(kind: str, n: int, k: int, seed: int):
    w = randn(n, k, seed=seed, scale=k ** -0.5)
    return w if kind == "float" else quantize_int8(w.cpu()).to(DEVICE)


@pytest.mark.parametrize("kind", ["float", "int8"])
def test_linear_swiglu_matches_the_reference(both, kind):
    ref, tri = both
    x = randn(2, 7, 45, seed=1)            # leading shape kept: [2, 7, K] -> [2, 7, H]
    w, b = weight(kind, 2 * 37, 45, seed=2), randn(2 * 37, seed=3, scale=0.5)
    want = ref.linear_swiglu(x, w, b, act_quant=None)
    got = tri.linear_swiglu(x, w, b, act_quant=None)
    assert got.shape == (2, 7, 37)
    close(got, want)
    close(tri.linear_swiglu(x, w, None, split_k=2), ref.linear_swiglu(x, w, None))


@pytest.mark.parametrize("kind", ["float", "int8"])
def test_linear_gated_residual_matches_the_reference(both, kind):
    ref, tri = both
    h = randn(13, 70, seed=4)
    w, b = weight(kind, 50, 70, seed=5), randn(50, seed=6, scale=0.5)
    mods = randn(13, 300, seed=7)
    gate = mods[:, 100:150]
    x = randn(13, 50, seed=8)
    want = ref.linear_gated_residual(x.clone(), h, w, b, gate, act_quant=None)
    x_tri = x.clone()
    got = tri.linear_gated_residual(x_tri, h, w, b, gate, act_quant=None, split_k=3)
    assert got is x_tri
    close(got, want)


def test_float_linear_matches_f_linear(both):
    ref, tri = both
    x, w, b = randn(3, 5, 33, seed=9), randn(40, 33, seed=10), randn(40, seed=11)
    close(tri.float_linear(x, w, b), ref.float_linear(x, w, b))


def test_engine_linears_measured_mode_runs_cublas_and_the_separate_kernels(both):
    """The empty table: float weights never reach our GEMM; 8-bit weights always do."""
    _, tri = both
    measured = OpSet(DEVICE, ("triton",))
    assert measured.float_gemm == "measured" and not MEASURED
    calls = []
    for name in ("float_linear", "linear_swiglu", "linear_gated_residual", "swiglu", "gated_residual"):
        fn = getattr(measured, name)
        measured._fns[name] = (lambda fn, name: lambda *a, **k: (calls.append(name), fn(*a, **k))[1])(fn, name)
    x, w = randn(6, 32, seed=12), randn(64, 32, seed=13)
    gate, res = randn(6, 64, seed=14), randn(6, 64, seed=15)
    swiglu = engine_linear.linear_swiglu(measured, x, w)
    engine_linear.linear_gated_residual(measured, res.clone(), x, w, None, gate)
    engine_linear.linear(measured, x, w)
    assert calls == ["swiglu", "gated_residual"]
    close(swiglu, tri.linear_swiglu(x, w))
    calls.clear()
    qw = quantize_int8(w.cpu()).to(DEVICE)
    engine_linear.linear_swiglu(measured, x, qw)
    engine_linear.linear_gated_residual(measured, res.clone(), x, qw, None, gate)
    assert calls == ["linear_swiglu", "linear_gated_residual"]


def test_measured_table_lookup_by_m_bucket():
    table = {("H200", "bfloat16", "swiglu", 34816, 5120): ((128, 3), (256, 1))}
    assert [m_bucket(m) for m in (1, 128, 129, 700, 2048)] == [128, 128, 256, 1024, 2048]
    assert measured_choice(table, "H200", torch.bfloat16, "swiglu", 100, 34816, 5120) == (True, 3)
    assert measured_choice(table, "H200", torch.bfloat16, "swiglu", 200, 34816, 5120) == (True, 1)
    assert measured_choice(table, "H200", torch.bfloat16, "swiglu", 300, 34816, 5120) == (False, None)
    assert measured_choice(table, "H100", torch.bfloat16, "swiglu", 100, 34816, 5120) == (False, None)
    assert measured_choice(table, "H200", torch.float16, "swiglu", 100, 34816, 5120) == (False, None)
    cpu = torch.device("cpu")
    assert choice_for("ours", cpu, torch.float32, "bias", 4, 8, 8) == (True, None)
    assert choice_for("measured", cpu, torch.float32, "bias", 4, 8, 8) == (False, None)
    assert choice_for("cublas", cpu, torch.float32, "bias", 4, 8, 8) == (False, None)


def test_bad_mode_and_bad_operands_are_clear_errors(both):
    _, tri = both
    with pytest.raises(ValueError, match="float_gemm must be one of"):
        OpSet("cpu", "torch", float_gemm="fastest")
    from bitdance_rt.runtime import Runtime
    with pytest.raises(InvalidRequestError, match="float_gemm must be one of"):
        Runtime.from_pretrained("/nonexistent", device="cpu", float_gemm="fastest")
    x, w = randn(4, 32, seed=16), randn(63, 32, seed=17)
    with pytest.raises(ValueError, match="SwiGLU epilogue needs a weight of 2H rows"):
        tri.linear_swiglu(x, w)
    with pytest.raises(ValueError, match="x has 31 channels, the weight"):
        tri.float_linear(x[:, :31], w)


@pytest.mark.parametrize("gemm", ["triton", "scaled_mm"])
def test_fp8_layer_epilogues_fused_or_after_scaled_mm(both, gemm):
    """fp8 W8A8 through ``quantized_linear``: the epilogue in ``fp8_gemm``'s store, or after ``torch._scaled_mm``
    as the separate kernels; both equal the PyTorch provider (same activation codes) within 1e-5."""
    from bitdance_rt.quantization.fast_linear import quantized_linear
    from bitdance_rt.quantization.quantized_weight import quantize_fp8
    ref, _ = both
    x, h = randn(5, 64, seed=20), randn(5, 64, seed=21)
    qw_up = quantize_fp8(randn(2 * 48, 64, seed=22, scale=0.125).cpu()).to(DEVICE)
    qw = quantize_fp8(randn(48, 64, seed=23, scale=0.125).cpu()).to(DEVICE)
    gate, res = randn(5, 96, seed=24)[:, 48:], randn(5, 48, seed=25)
    try:
        got = quantized_linear(x, qw_up, None, act_quant="token", gemm=gemm, epilogue="swiglu")
    except Exception as error:  # noqa: BLE001 - torch builds without row-wise _scaled_mm here
        if gemm == "scaled_mm":
            pytest.skip(f"torch._scaled_mm is not available here: {error}")
        raise
    close(got, ref.linear_swiglu(x, qw_up, None, act_quant="token"))
    out = res.clone()
    quantized_linear(h, qw, None, act_quant="token", gemm=gemm, epilogue="gated_residual", gate=gate, out=out)
    close(out, ref.linear_gated_residual(res.clone(), h, qw, None, gate, act_quant="token"))
