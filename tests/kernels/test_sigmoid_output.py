"""``sigmoid_output`` (``2·sigmoid(x) − 1``, the output map of sigmoid-output heads) against its float64 reference,
through the interpreter on the CPU. Fresh seeded random inputs of a wide range (saturation on both sides), the
output NaN-poisoned; sizes that are not multiples of the 1024-element block; in place as the head runs it.
Tolerance: relative error below 1e-5 in float32, 1e-2 in bf16 (GPU only)."""

from __future__ import annotations

import pytest
from kernel_testing import DTYPES, assert_close, poisoned, randn, tolerance

from bitdance_rt.kernels.sigmoid_output import sigmoid_output
from bitdance_rt.reference.head_ops import sigmoid_output_ref


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 16, 32), (2, 1, 32), (5, 64, 33)])
def test_sigmoid_output(shape, dtype):
    x = randn(*shape, seed=1, dtype=dtype, scale=6.0)
    out = poisoned(*shape, dtype=dtype)
    assert sigmoid_output(x, out=out) is out
    expected = sigmoid_output_ref(x.double().cpu())
    assert_close(out, expected, tolerance(dtype))
    inplace = x.clone()
    sigmoid_output(inplace, out=inplace)
    assert_close(inplace, expected, tolerance(dtype))


def test_sigmoid_output_allocates():
    x = randn(4, 50, seed=2, scale=3.0)
    assert_close(sigmoid_output(x), sigmoid_output_ref(x.double()), 1e-5)
