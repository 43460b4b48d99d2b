"""``time_condition`` (``silu(cond + time)``, the head's per-sampling-step condition) against its float64 reference,
through the interpreter on the CPU. Fresh seeded random inputs; the output NaN-poisoned (a row-strided view into a
wider buffer whose other columns must stay NaN); widths that are not powers of two and cross the 1024-column tile,
row counts that are not multiples of the row tile. Tolerance: relative error below 1e-5 in float32, 1e-2 in bf16
(GPU only)."""

from __future__ import annotations

import pytest
import torch
from kernel_testing import DEVICE, DTYPES, assert_close, poisoned, randn, tolerance

from bitdance_rt.kernels.time_condition import time_condition
from bitdance_rt.reference.head_ops import time_condition_ref


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,width", [(7, 96), (33, 320), (5, 1500)])
def test_time_condition(rows, width, dtype):
    cond = randn(rows, 2 * width, seed=1, dtype=dtype, scale=2.0)[:, :width]  # row-strided
    time = randn(width, seed=2, dtype=dtype, scale=2.0)
    buffer = poisoned(rows, width + 3, dtype=dtype)
    out = buffer[:, :width]
    assert time_condition(cond, time, out=out) is out
    expected = time_condition_ref(cond.double().cpu(), time.double().cpu())
    assert_close(out, expected, tolerance(dtype))
    assert torch.isnan(buffer[:, width:]).all()  # no stray writes


def test_time_condition_allocates_and_checks_shapes():
    cond, time = randn(4, 64, seed=3), randn(64, seed=4)
    assert_close(time_condition(cond, time), time_condition_ref(cond.double(), time.double()), 1e-5)
    with pytest.raises(ValueError):
        time_condition(cond, randn(63, seed=5, device=DEVICE))
