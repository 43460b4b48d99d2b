"""The head's final layer (``final_layer``) and the final layer fused with the sampler step (``final_layer_step``)
against their float64 references ``reference.head_ops.final_layer_ref`` / ``final_layer_step_ref``.

Inputs are fresh seeded random tensors: x with an offset and spread far from (0, 1), scale/shift row-strided chunks
of one adaLN output, the weight ~ N(0, 1/D). Widths cross the kernels' reduction chunks (32 columns for float32
weights, 128 for 16-bit ones) and are not multiples of them (96, 300, 1500); row counts are not multiples of the
16-row tile (B·P = 15, 37); token channels 16, 32 and 20 (padded to the 32-wide tile). Sigmoid output on and off;
guided and unguided; cfg as a Python float, a ``[1]`` tensor and one scale per row ``[B]``. Outputs are NaN-poisoned
before each launch (``assert_close`` fails on any NaN left). Tolerance: relative error ``||out − ref|| / ||ref||``
below 1e-5 in float32 (measured about 2e-7), 1e-2 in bf16 (GPU only). And bit for bit: ``final_layer_step`` equals
``final_layer`` followed by the Triton ``sampler_step`` (the same prediction and step arithmetic, no mul-add
contraction in either) where each hidden row sits at the same place of its 16-row tile in both launches (unguided,
or B·P a multiple of 16): on the CPU the interpreter's ``tl.dot`` is NumPy's float32 GEMM (OpenBLAS), which can
round a row's dot products 1 ulp differently depending on the row's place in the tile (seen: guided B·P = 15, rows
0, 6, 12).
"""

from __future__ import annotations

import pytest
import torch
from kernel_testing import DEVICE, DTYPES, FLOAT32_TOL, assert_close, poisoned, randn, tolerance

from bitdance_rt.kernels.final_layer import BLOCK_M, MAX_CHANNELS, final_layer, final_layer_step
from bitdance_rt.kernels.sampler_step import sampler_step
from bitdance_rt.reference.diffusion_head import LN_EPS
from bitdance_rt.reference.head_ops import final_layer_ref, final_layer_step_ref
from bitdance_rt.reference.sampler import running_times, step_times

NUM_STEPS, STEP = 6, 3


def f64(t):
    return t.detach().to("cpu", torch.float64) if isinstance(t, torch.Tensor) else t


def final_inputs(rows: int, width: int, channels: int, seed: int, dtype=torch.float32, bias: bool = True):
    """x ``[rows, D]``; scale and shift row-strided chunks of a ``[rows, 4D]`` adaLN output; weight ``[C, D]``."""
    x = randn(rows, width, seed=seed, dtype=dtype, scale=3.0) + 1.5
    mods = randn(rows, 4 * width, seed=seed + 1, dtype=dtype, scale=0.5)
    scale, shift = mods[:, 2 * width:3 * width], mods[:, 3 * width:]
    weight = randn(channels, width, seed=seed + 2, dtype=dtype, scale=width ** -0.5)
    b = randn(channels, seed=seed + 3, dtype=dtype, scale=0.1) if bias else None
    return x, scale, shift, weight, b


def step_inputs(batch: int, patch: int, channels: int, seed: int):
    sample = randn(batch, patch, channels, seed=seed)
    noise = randn(batch, patch, channels, seed=seed + 1)
    times = step_times(NUM_STEPS, 3.0, DEVICE)
    return sample, noise, times, running_times(times)


def cfg_of(kind: str, batch: int):
    if kind == "float":
        return 4.5
    if kind == "one":
        return torch.tensor([2.5], device=DEVICE)
    return torch.linspace(1.5, 7.5, batch, device=DEVICE)  # one scale per row


# ---------------------------------------------------------------- final_layer

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sigmoid", [False, True], ids=["linear", "sigmoid"])
@pytest.mark.parametrize("rows,width,channels", [(7, 96, 32), (37, 300, 16), (15, 1500, 20)])
def test_final_layer(rows, width, channels, sigmoid, dtype):
    x, scale, shift, weight, bias = final_inputs(rows, width, channels, seed=1, dtype=dtype)
    assert scale.stride(0) == 4 * width
    out = poisoned(rows, channels, dtype=dtype)
    assert final_layer(x, scale, shift, weight, bias, LN_EPS, sigmoid, out=out) is out
    expected = final_layer_ref(f64(x), f64(scale), f64(shift), f64(weight), f64(bias), LN_EPS, sigmoid)
    assert_close(out, expected, tolerance(dtype))


def test_final_layer_without_bias_and_fresh_output():
    x, scale, shift, weight, _ = final_inputs(21, 200, 32, seed=5, bias=False)
    got = final_layer(x, scale, shift, weight, None, LN_EPS, True)
    assert got.shape == (21, 32) and got.dtype == torch.float32
    assert_close(got, final_layer_ref(f64(x), f64(scale), f64(shift), f64(weight), None, LN_EPS, True), FLOAT32_TOL)


def test_final_layer_eps_matters_across_chunks():
    """Rows of variance ~1e-6 over several reduction chunks: eps 1e-6 and 1e-5 give different predictions, and the
    kernel follows eps (the chunked statistics see the whole row)."""
    x, scale, shift, weight, bias = final_inputs(5, 300, 32, seed=7)
    x = randn(5, 300, seed=8, scale=1e-3)
    got = {eps: final_layer(x, scale, shift, weight, bias, eps, False, out=poisoned(5, 32)) for eps in (1e-6, 1e-5)}
    for eps, out in got.items():
        assert_close(out, final_layer_ref(f64(x), f64(scale), f64(shift), f64(weight), f64(bias), eps, False),
                     FLOAT32_TOL)
    assert not torch.allclose(got[1e-6], got[1e-5], rtol=1e-3)


# ---------------------------------------------------------------- final_layer_step

@pytest.mark.parametrize("sigmoid", [False, True], ids=["linear", "sigmoid"])
@pytest.mark.parametrize("cfg_kind", ["float", "one", "per_row"])
@pytest.mark.parametrize("guided", [True, False], ids=["guided", "unguided"])
@pytest.mark.parametrize("batch,patch,width,channels", [(3, 5, 300, 32), (1, 37, 150, 16), (2, 16, 200, 32)])
def test_final_layer_step(batch, patch, width, channels, guided, cfg_kind, sigmoid):
    mult = 2 if guided else 1
    x, scale, shift, weight, bias = final_inputs(mult * batch * patch, width, channels, seed=10)
    sample, noise, times, running = step_inputs(batch, patch, channels, seed=20)
    cfg = cfg_of(cfg_kind, batch)
    out = poisoned(batch, patch, channels)
    got = final_layer_step(x, scale, shift, weight, bias, LN_EPS, sigmoid, sample, noise, times, running, STEP, cfg,
                           guided, out=out)
    assert got is out
    expected = final_layer_step_ref(f64(x), f64(scale), f64(shift), f64(weight), f64(bias), LN_EPS, sigmoid,
                                    f64(sample), f64(noise), f64(running[STEP]),
                                    f64(times[STEP + 1]) - f64(times[STEP]), f64(cfg), guided)
    assert_close(out, expected, FLOAT32_TOL)
    # bit for bit the unfused Triton pair: final_layer, then sampler_step from its prediction
    pred = final_layer(x, scale, shift, weight, bias, LN_EPS, sigmoid).view(mult * batch, patch, channels)
    unfused = sampler_step(pred, sample, noise, times, running, STEP, cfg, guided, out=poisoned(batch, patch,
                                                                                                 channels))
    if not guided or (batch * patch) % BLOCK_M == 0:  # rows at the same tile places in both launches
        assert torch.equal(out, unfused)
    else:
        assert_close(out, unfused, FLOAT32_TOL)


def test_final_layer_step_in_place_and_per_row_scales():
    """``out=sample`` updates the sample in place, equal to a separate output; a per-row cfg equals launching
    each row alone with its own scale (P = 16: each row's hidden rows fill whole tiles in both launches)."""
    batch, patch, width, channels = 3, 16, 130, 32
    x, scale, shift, weight, bias = final_inputs(2 * batch * patch, width, channels, seed=30)
    sample, noise, times, running = step_inputs(batch, patch, channels, seed=31)
    cfg = torch.tensor([1.5, 4.0, 9.0], device=DEVICE)
    separate = final_layer_step(x, scale, shift, weight, bias, LN_EPS, True, sample, noise, times, running, 1, cfg,
                                True, out=poisoned(batch, patch, channels))
    n = batch * patch
    for b in range(batch):
        rows = torch.cat([torch.arange(b * patch, (b + 1) * patch), n + torch.arange(b * patch, (b + 1) * patch)])
        alone = final_layer_step(x[rows].contiguous(), scale[rows].contiguous(), shift[rows].contiguous(), weight,
                                 bias, LN_EPS, True, sample[b:b + 1].contiguous(), noise[b:b + 1].contiguous(), times,
                                 running, 1, float(cfg[b]), True)
        assert torch.equal(alone[0], separate[b])
    in_place = sample.clone()
    assert final_layer_step(x, scale, shift, weight, bias, LN_EPS, True, in_place, noise, times, running, 1, cfg,
                            True, out=in_place) is in_place
    assert torch.equal(in_place, separate)


def test_empty_inputs_launch_nothing():
    x = randn(0, 64, seed=40)
    weight = randn(32, 64, seed=41)
    assert final_layer(x, x, x, weight, None, LN_EPS, False).shape == (0, 32)
    sample, noise, times, running = step_inputs(0, 4, 32, seed=42)
    assert final_layer_step(x, x, x, weight, None, LN_EPS, False, sample, noise, times, running, 0, 2.0,
                            True).shape == (0, 4, 32)


# ---------------------------------------------------------------- argument errors

def test_final_layer_argument_errors():
    x, scale, shift, weight, bias = final_inputs(8, 64, 32, seed=50)
    with pytest.raises(ValueError, match=r"final_layer: weight has shape \[32, 63\], expected \[\*, 64\]"):
        final_layer(x, scale, shift, weight[:, :63], bias, LN_EPS, False)
    with pytest.raises(ValueError, match=r"final_layer: bias has shape \[31\], expected \[32\]"):
        final_layer(x, scale, shift, weight, bias[:31], LN_EPS, False)
    with pytest.raises(ValueError, match="final_layer: weight has dtype torch.float64, expected torch.float32"):
        final_layer(x, scale, shift, weight.double(), bias, LN_EPS, False)
    with pytest.raises(ValueError, match=r"final_layer: scale has shape \[8, 32\], expected \[8, 64\]"):
        final_layer(x, scale[:, :32], shift, weight, bias, LN_EPS, False)
    with pytest.raises(ValueError, match="final_layer: shift has channel stride 2, expected 1"):
        final_layer(x, scale, randn(8, 128, seed=51)[:, ::2], weight, bias, LN_EPS, False)
    wide = randn(MAX_CHANNELS + 1, 64, seed=52)
    with pytest.raises(ValueError, match=f"final_layer: weight has {MAX_CHANNELS + 1} output channels, expected "
                                         f"1..{MAX_CHANNELS}"):
        final_layer(x, scale, shift, wide, None, LN_EPS, False)
    with pytest.raises(ValueError, match="final_layer: eps is 0.0, expected a positive float"):
        final_layer(x, scale, shift, weight, bias, 0.0, False)
    with pytest.raises(TypeError, match="final_layer: sigmoid must be a bool"):
        final_layer(x, scale, shift, weight, bias, LN_EPS, 1)
    with pytest.raises(ValueError, match=r"final_layer: out has shape \[8, 16\], expected \[8, 32\]"):
        final_layer(x, scale, shift, weight, bias, LN_EPS, False, out=poisoned(8, 16))
    with pytest.raises(TypeError, match="final_layer: x must be a torch.Tensor"):
        final_layer(x.tolist(), scale, shift, weight, bias, LN_EPS, False)


def test_final_layer_step_argument_errors():
    batch, patch = 2, 4
    x, scale, shift, weight, bias = final_inputs(2 * batch * patch, 64, 32, seed=60)
    sample, noise, times, running = step_inputs(batch, patch, 32, seed=61)

    def call(**changes):
        args = dict(x=x, scale=scale, shift=shift, weight=weight, bias=bias, eps=LN_EPS, sigmoid=True,
                    sample=sample, noise=noise, times=times, running=running, step=STEP, cfg=3.0, guided=True)
        args.update(changes)
        return final_layer_step(**args)
    with pytest.raises(ValueError, match=r"final_layer_step: x has 8 rows, expected 2·B·P = 16 for a sample of "
                                         r"shape \[2, 4, 32\] \(guided"):
        call(x=x[:8], scale=scale[:8], shift=shift[:8])
    with pytest.raises(ValueError, match=r"final_layer_step: x has 16 rows, expected 1·B·P = 8 .*unguided"):
        call(guided=False)
    with pytest.raises(ValueError, match=r"final_layer_step: sample has shape \[2, 4, 16\], expected \[\*, \*, 32\]"):
        call(sample=sample[..., :16].contiguous())
    with pytest.raises(ValueError, match="final_layer_step: sample has dtype torch.float64"):
        call(sample=sample.double())
    with pytest.raises(ValueError, match=r"final_layer_step: noise has shape \[2, 4, 31\], expected \[2, 4, 32\]"):
        call(noise=noise[..., :31].contiguous())
    with pytest.raises(ValueError, match=r"final_layer_step: cfg has shape \[3\], expected \[1\] \(one scale\) or "
                                         r"\[2\]"):
        call(cfg=torch.ones(3, device=DEVICE))
    with pytest.raises(TypeError, match="final_layer_step: guided must be a bool"):
        call(guided=1)
    with pytest.raises(ValueError, match=r"final_layer_step: step is 6, expected a Python int in \[0, 6\)"):
        call(step=NUM_STEPS)
    with pytest.raises(ValueError, match=r"final_layer_step: running has shape \[5\], expected \[6\]"):
        call(running=running[:5])
    with pytest.raises(ValueError, match=r"final_layer_step: out has shape \[2, 4, 16\], expected \[2, 4, 32\]"):
        call(out=poisoned(2, 4, 16))
