"""RMSNorm with fused residual add against its float64 reference (``reference.pre_attention``), and that reference
against the backbones' own norms (Qwen3's RMSNorm module, ``torch.nn.RMSNorm``).

Fresh seeded rows with an offset (so the norm matters), widths that are not powers of two (96, 320, 1000: the
kernel's tile is the next power of two) and 5,120, row counts that leave part of a multi-row tile empty; a float16
sublayer output on a float32 residual stream. Outputs are NaN-poisoned before each launch. Tolerance: relative
error ``||out − ref|| / ||ref||`` below 1e-5 in float32 (measured ≤ 1e-7), 1e-2 in bf16 (GPU only; there the new
residual must equal the bf16 sum bit for bit and y its style's bf16 formula on at least 99% of the elements).
"""

from __future__ import annotations

import pytest
import torch
from kernel_testing import DEVICE, DTYPES, FLOAT32_TOL, assert_close, poisoned, randn, tolerance

from bitdance_rt.errors import InvalidRequestError
from bitdance_rt.kernels.rmsnorm_residual import rmsnorm_residual
from bitdance_rt.reference.pre_attention import rmsnorm_residual_reference
from bitdance_rt.reference.qwen3 import RMSNorm as Qwen3RMSNorm

EPS = 1e-6


def f64(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().to("cpu", torch.float64)


def inputs(rows: int, hidden: int, seed: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = randn(rows, hidden, seed=seed, dtype=dtype, scale=2.0) + 0.7
    residual = randn(rows, hidden, seed=seed + 1, dtype=dtype, scale=3.0)
    weight = 1.0 + randn(hidden, seed=seed + 2, dtype=dtype, scale=0.3)
    return x, residual, weight


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_residual", [True, False], ids=["residual", "no_residual"])
@pytest.mark.parametrize("style", ["hf", "torch"])
@pytest.mark.parametrize("rows,hidden", [(1, 96), (7, 320), (33, 1000), (5, 5120)])
def test_rmsnorm_residual(rows, hidden, style, with_residual, dtype):
    x, residual, weight = inputs(rows, hidden, seed=rows + hidden, dtype=dtype)
    residual = residual if with_residual else None
    out, residual_out = poisoned(rows, hidden, dtype=dtype), poisoned(rows, hidden, dtype=dtype)
    y, new_residual = rmsnorm_residual(x, residual, weight, EPS, style=style, out=out, residual_out=residual_out)
    assert y is out and new_residual is residual_out
    ref_y, ref_residual = rmsnorm_residual_reference(f64(x), f64(residual), f64(weight), EPS, style)
    tol = tolerance(dtype)
    assert_close(y, ref_y, tol)
    assert_close(new_residual, ref_residual, tol)
    if dtype == torch.bfloat16:  # the roundings of each style are mirrored
        same_y, same_residual = same_dtype_formula(x, residual, weight, style)
        assert torch.equal(new_residual, same_residual)
        assert (y == same_y).float().mean().item() >= 0.99


def same_dtype_formula(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                       style: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Each style's roundings written out (on the CPU "torch" is what torch.nn.RMSNorm does, checked below; some
    older torch builds rounded before the weight on CUDA, so the GPU check uses the formula, not the module)."""
    summed = x if residual is None else x + residual
    wide = summed.float()
    normalised = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + EPS)
    if style == "hf":
        return weight * normalised.to(x.dtype), summed
    return (normalised * weight.float()).to(x.dtype), summed


@pytest.mark.parametrize("style", ["hf", "torch"])
def test_narrow_sublayer_output_on_a_float32_stream(style):
    """A float16 sublayer output added to a float32 residual stream (the released class-conditional model runs
    its norms and residuals in float32 under autocast): the new residual is float32, y is float32 by default or
    cast once into a float16 ``out`` (at most one float16 unit in the last place from the rounded reference)."""
    x, residual, weight = inputs(7, 320, seed=9, dtype=torch.float32)
    x = x.half()
    y, new_residual = rmsnorm_residual(x, residual, weight, EPS, style=style)
    assert y.dtype == new_residual.dtype == torch.float32
    ref_y, ref_residual = rmsnorm_residual_reference(f64(x), f64(residual), f64(weight), EPS, style)
    assert_close(new_residual, ref_residual, FLOAT32_TOL)
    assert_close(y, ref_y, FLOAT32_TOL)
    narrow = poisoned(7, 320, dtype=torch.float16)
    y16, _ = rmsnorm_residual(x, residual, weight, EPS, style=style, out=narrow)
    assert y16 is narrow
    torch.testing.assert_close(narrow.double().cpu(), ref_y.half().double(), rtol=2 ** -10, atol=0)
    assert (narrow.cpu() == ref_y.half()).float().mean().item() >= 0.99


def test_styles_differ_and_eps_matters():
    """In bf16 math the two styles round differently (checked through the references on the CPU); in the kernel,
    float32 rows of mean square ~1e-6 give different outputs for eps 1e-6 and 1e-5."""
    x, residual, weight = inputs(4, 96, seed=5, dtype=torch.float32)
    hf, _ = rmsnorm_residual_reference(x.bfloat16(), None, weight.bfloat16(), EPS, "hf")
    plain, _ = rmsnorm_residual_reference(x.bfloat16(), None, weight.bfloat16(), EPS, "torch")
    assert not torch.equal(hf, plain)
    small = x * 1e-3
    y_small, _ = rmsnorm_residual(small, None, weight, 1e-6, style="hf")
    y_large, _ = rmsnorm_residual(small, None, weight, 1e-5, style="hf")
    assert_close(y_small, rmsnorm_residual_reference(f64(small), None, f64(weight), 1e-6, "hf")[0], FLOAT32_TOL)
    assert_close(y_large, rmsnorm_residual_reference(f64(small), None, f64(weight), 1e-5, "hf")[0], FLOAT32_TOL)
    assert (y_small - y_large).abs().max() > 0.1


def test_residual_outputs():
    """Without ``residual_out`` a fresh new residual comes back (or x itself when there is no residual);
    ``residual_out=residual`` updates in place; with no residual, ``residual_out`` receives a copy of x."""
    x, residual, weight = inputs(9, 320, seed=6, dtype=torch.float32)
    ref_y, ref_residual = rmsnorm_residual_reference(f64(x), f64(residual), f64(weight), EPS, "hf")

    y, fresh = rmsnorm_residual(x, residual, weight, EPS, style="hf")
    assert fresh is not residual and fresh is not x and y.shape == x.shape
    assert_close(y, ref_y, FLOAT32_TOL)
    assert torch.equal(fresh, x + residual)

    in_place = residual.clone()
    y2, same = rmsnorm_residual(x, in_place, weight, EPS, style="hf", residual_out=in_place)
    assert same is in_place and torch.equal(in_place, fresh) and torch.equal(y2, y)

    _, passed_through = rmsnorm_residual(x, None, weight, EPS, style="torch")
    assert passed_through is x
    copy = poisoned(9, 320)
    _, copied = rmsnorm_residual(x, None, weight, EPS, style="torch", residual_out=copy)
    assert copied is copy and torch.equal(copy, x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_reference_equals_backbone_norms(dtype):
    """The reference's styles equal the modules the backbones run, bit for bit, on the CPU: "hf" is Qwen3's
    RMSNorm (``h = x + residual`` then the norm), "torch" is ``torch.nn.RMSNorm`` (class-conditional); both
    equal the written-out formula the GPU bf16 check uses."""
    x, residual, weight = inputs(6, 96, seed=7, dtype=dtype)
    x, residual, weight = x.cpu(), residual.cpu(), weight.cpu()
    qwen3_norm = Qwen3RMSNorm(96, EPS).to(dtype)
    torch_norm = torch.nn.RMSNorm(96, eps=EPS).to(dtype)
    with torch.no_grad():
        qwen3_norm.weight.copy_(weight)
        torch_norm.weight.copy_(weight)
        summed = x + residual
        for style, module in (("hf", qwen3_norm), ("torch", torch_norm)):
            y, new_residual = rmsnorm_residual_reference(x, residual, weight, EPS, style)
            assert torch.equal(new_residual, summed)
            assert torch.equal(y, module(summed))
            formula_y, _ = same_dtype_formula(x, residual, weight, style)
            assert torch.equal(y, formula_y)


# ---------------------------------------------------------------- argument errors

def _args(change=None) -> dict:
    """Valid arguments of rmsnorm_residual, with ``change(args)``'s entries replacing some."""
    x, residual, weight = inputs(3, 96, seed=8, dtype=torch.float32)
    args = dict(x=x, residual=residual, weight=weight, eps=EPS, style="hf")
    args.update(change(args) if change else {})
    return args


ARGUMENT_ERRORS = [
    ("style", lambda a: {"style": "layernorm"}, "style must be one of"),
    ("x-rank", lambda a: {"x": a["x"][None]}, r"x has shape \[1, 3, 96\], expected \[\*, \*\]"),
    ("x-dtype", lambda a: {"x": a["x"].double()}, "x has dtype torch.float64"),
    ("x-view", lambda a: {"x": a["x"].t().contiguous().t()}, "x must be contiguous"),
    ("residual-shape", lambda a: {"residual": a["residual"][:2]}, r"residual has shape \[2, 96\]"),
    ("residual-dtype", lambda a: {"residual": a["residual"].double()}, "residual has dtype torch.float64"),
    ("weight-shape", lambda a: {"weight": a["weight"][:95]}, r"weight has shape \[95\], expected \[96\]"),
    ("weight-dtype", lambda a: {"weight": a["weight"].bfloat16()}, "weight has dtype torch.bfloat16"),
    ("eps", lambda a: {"eps": -1.0}, "eps must be a positive number"),
    ("out", lambda a: {"out": torch.empty(3, 95, device=DEVICE)}, r"out has shape \[3, 95\]"),
    ("residual_out", lambda a: {"residual_out": torch.empty(3, 96, dtype=torch.float16, device=DEVICE)},
     "residual_out has dtype torch.float16"),
    ("out-dtype", lambda a: {"out": torch.empty(3, 96, dtype=torch.int32, device=DEVICE)}, "out has dtype"),
    ("weight-vs-x", lambda a: {"x": a["x"].half(), "residual": None}, "weight has dtype torch.float32"),
    ("too-wide", lambda a: {"x": torch.zeros(1, 20000, device=DEVICE), "residual": None,
                            "weight": torch.ones(20000, device=DEVICE)}, "expected 1 to 16384"),
]


@pytest.mark.parametrize("change,match", [pytest.param(c, m, id=i) for i, c, m in ARGUMENT_ERRORS])
def test_argument_errors(change, match):
    args = _args(change)
    with pytest.raises(ValueError, match=match):
        rmsnorm_residual(args.pop("x"), args.pop("residual"), args.pop("weight"), args.pop("eps"), **args)


def test_argument_type_errors():
    args = _args()
    with pytest.raises(TypeError, match="residual must be a torch.Tensor"):
        rmsnorm_residual(args["x"], args["residual"].tolist(), args["weight"], EPS, style="hf")
    with pytest.raises(InvalidRequestError, match="style must be one of"):
        rmsnorm_residual_reference(args["x"], None, args["weight"], EPS, "rms")
