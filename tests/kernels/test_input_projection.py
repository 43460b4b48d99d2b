"""The head's input projection for both guidance halves (``input_projection``) against its float64 reference
``reference.head_ops.input_projection_ref`` (``input_proj(x.to(dtype)).repeat(mult, 1)``).

Inputs are fresh seeded random tensors (the float32 sample, a weight ~ N(0, 1/C), a bias). Shapes: row counts B·P
not multiples of the 32-row tile (15, 37, 1), widths not multiples of the 64-column tile (70, 300, 33), token
channels 16, 24 (padded to the 32-wide product step) and 32, and 80 (two product steps of 64). Outputs are
NaN-poisoned before the launch; with mult = 2 both halves must be bit for bit equal. Tolerance: relative error
``||out − ref|| / ||ref||`` below 1e-5 in float32 (measured about 1e-7), 1e-2 in bf16 (GPU only).
"""

from __future__ import annotations

import pytest
import torch
from kernel_testing import DEVICE, DTYPES, FLOAT32_TOL, assert_close, poisoned, randn, tolerance

from bitdance_rt.kernels.input_projection import input_projection
from bitdance_rt.reference.head_ops import input_projection_ref


def f64(t):
    return None if t is None else t.detach().to("cpu", torch.float64)


def projection_inputs(batch: int, patch: int, channels: int, width: int, seed: int, dtype=torch.float32):
    x = randn(batch, patch, channels, seed=seed)  # the sampler's float32 sample
    weight = randn(width, channels, seed=seed + 1, dtype=dtype, scale=channels ** -0.5)
    bias = randn(width, seed=seed + 2, dtype=dtype, scale=0.1)
    return x, weight, bias


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mult", [1, 2], ids=["unguided", "guided"])
@pytest.mark.parametrize("batch,patch,channels,width", [(3, 5, 24, 70), (1, 37, 32, 300), (1, 1, 16, 33),
                                                        (2, 16, 80, 96)])
def test_input_projection(batch, patch, channels, width, mult, dtype):
    x, weight, bias = projection_inputs(batch, patch, channels, width, seed=1, dtype=dtype)
    rows = batch * patch
    out = poisoned(mult * rows, width, dtype=dtype)
    assert input_projection(x, weight, bias, mult, out=out) is out
    assert_close(out, input_projection_ref(f64(x), f64(weight), f64(bias), mult), tolerance(dtype))
    if mult == 2:
        assert torch.equal(out[:rows], out[rows:])


def test_input_projection_matches_the_module_chain_and_without_bias():
    """Equal to the chain it replaces (``nn.Linear`` on the cast sample, then ``repeat``) within float32 rounding;
    no bias: the plain product; ``out=None`` gives a fresh ``[mult·B·P, D]`` in the weight's dtype."""
    x, weight, bias = projection_inputs(3, 7, 32, 130, seed=5)
    layer = torch.nn.Linear(32, 130).to(DEVICE)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
        chain = layer(x).reshape(21, 130).repeat(2, 1)
    got = input_projection(x, weight, bias, 2)
    assert got.shape == (42, 130) and got.dtype == torch.float32 and got.is_contiguous()
    assert_close(got, chain, FLOAT32_TOL)
    assert_close(input_projection(x, weight, None, 1), input_projection_ref(f64(x), f64(weight), None, 1),
                 FLOAT32_TOL)


def test_empty_input_launches_nothing():
    x, weight, bias = projection_inputs(0, 4, 32, 64, seed=8)
    assert input_projection(x, weight, bias, 2).shape == (0, 64)


def test_input_projection_argument_errors():
    x, weight, bias = projection_inputs(2, 4, 32, 64, seed=10)
    with pytest.raises(ValueError, match=r"input_projection: weight has shape \[64, 16\], expected \[\*, 32\]"):
        input_projection(x, weight[:, :16].contiguous(), bias, 2)
    with pytest.raises(ValueError, match=r"input_projection: bias has shape \[63\], expected \[64\]"):
        input_projection(x, weight, bias[:63], 2)
    with pytest.raises(ValueError, match="input_projection: x_half has dtype torch.float64, expected torch.float32"):
        input_projection(x.double(), weight, bias, 2)
    with pytest.raises(ValueError, match=r"input_projection: x_half has shape \[8, 32\], expected \[\*, \*, \*\]"):
        input_projection(x.view(8, 32), weight, bias, 2)
    with pytest.raises(ValueError, match="input_projection: bias has dtype torch.float64, expected torch.float32"):
        input_projection(x, weight, bias.double(), 2)
    with pytest.raises(ValueError, match="input_projection: mult is 3, expected the Python int 1 .* or 2"):
        input_projection(x, weight, bias, 3)
    with pytest.raises(ValueError, match="input_projection: mult is True"):
        input_projection(x, weight, bias, True)
    with pytest.raises(ValueError, match=r"input_projection: out has shape \[8, 64\], expected \[16, 64\]"):
        input_projection(x, weight, bias, 2, out=poisoned(8, 64))
    with pytest.raises(ValueError, match="input_projection: weight must be contiguous"):
        input_projection(x, torch.empty(32, 64, device=DEVICE).t(), bias, 2)
