"""Measured (printed) error of each 8-bit scheme against the float32 layer, on random weights of a realistic shape:
a 1024 -> 512 linear (``[512, 1024]`` weight, N(0, 1/1024) entries) over 128 tokens (the 14B decode block), through
the reference math (the kernels equal it within 1e-5, tests of their own).

Two activation sets: Gaussian tokens of different magnitudes, and the same with 8 outlier channels 30x larger (as
transformer activations have; e4m3's exponent keeps their neighbours' relative precision within a per-token scale,
an integer format would not). Printed as ``||y_q − y|| / ||y||`` per scheme (shown without ``-s``). The assertion
is only a gross-bug guard (below 10 %), not a quality target: measured about 0.8 % for int8 per channel and 2.6 %
(weight-only) to 3.7 % (W8A8) for e4m3 (3 mantissa bits).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bitdance_rt.quantization import quantize_fp8, quantize_int8, quantized_linear_reference

pytestmark = pytest.mark.usefixtures("single_thread")

SCHEMES = {  # name: (quantizer, act_quant)
    "int8 per-channel, weight-only": (lambda w: quantize_int8(w), None),
    "fp8 per-channel, weight-only": (lambda w: quantize_fp8(w), None),
    "fp8 per-channel, tokens (W8A8)": (lambda w: quantize_fp8(w), "token"),
    "fp8 128x128 blocks, 1x128 groups (W8A8)": (lambda w: quantize_fp8(w, 128), "group"),
    "fp8 128x128 blocks, tokens (W8A8)": (lambda w: quantize_fp8(w, 128), "token"),
}


def activations(outliers: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(128, 1024, generator=g) * torch.logspace(-1, 1, 128)[:, None]
    if outliers:
        x[:, torch.randperm(1024, generator=g)[:8]] *= 30.0
    return x


def test_measured_relative_error(capsys):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(512, 1024, generator=g) / 32.0
    b = torch.randn(512, generator=g) * 0.02
    lines = ["relative error ||y_q - y|| / ||y|| of a 1024 -> 512 linear over 128 tokens, vs float32:",
             f"{'scheme':<44} {'gaussian':>9} {'outliers':>9}"]
    for name, (quantize, act_quant) in SCHEMES.items():
        qw = quantize(w)
        errors = []
        for outliers in (False, True):
            x = activations(outliers)
            exact = F.linear(x.double(), w.double(), b.double())
            y = quantized_linear_reference(x, qw, b, act_quant)
            errors.append(((y.double() - exact).norm() / exact.norm()).item())
        lines.append(f"{name:<44} {errors[0]:>9.2e} {errors[1]:>9.2e}")
        assert all(e < 0.1 for e in errors), f"{name}: {errors} (gross-bug guard)"
    with capsys.disabled():
        print("\n" + "\n".join(lines))
