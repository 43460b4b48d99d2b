"""``group_norm_silu`` (the token decoder's GroupNorm then swish) against its float64 reference and against the
reference decoder's own modules (``ResBlock.norm1`` then ``swish``), through the interpreter on the CPU. Fresh
seeded random inputs with an offset and spread far from (0, 1); outputs NaN-poisoned; groups larger and smaller
than the kernel's 1024-element chunk and not multiples of it; affine and affine-free (the token-styled norm).
Tolerance: relative error below 1e-5 in float32, 1e-2 in bf16 (GPU only)."""

from __future__ import annotations

import pytest
import torch
from kernel_testing import DTYPES, assert_close, poisoned, randn, tolerance

from bitdance_rt.kernels.group_norm_silu import group_norm_silu
from bitdance_rt.reference.decoder_ops import group_norm_silu_ref
from bitdance_rt.reference.token_decoder import NORM_EPS, NORM_GROUPS, ResBlock, swish


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "affine_free"])
@pytest.mark.parametrize("shape", [(2, 64, 5, 7), (1, 96, 16, 12), (3, 32, 2, 2)])
def test_group_norm_silu(shape, affine, dtype):
    x = randn(*shape, seed=1, dtype=dtype, scale=3.0) + 1.5
    channels = shape[1]
    weight = 1.0 + randn(channels, seed=2, dtype=dtype, scale=0.3) if affine else None
    bias = randn(channels, seed=3, dtype=dtype, scale=0.2) if affine else None
    out = poisoned(*shape, dtype=dtype)
    assert group_norm_silu(x, weight, bias, NORM_GROUPS, NORM_EPS, out=out) is out
    f64 = (lambda t: None if t is None else t.double().cpu())
    assert_close(out, group_norm_silu_ref(f64(x), f64(weight), f64(bias), NORM_GROUPS, NORM_EPS), tolerance(dtype))


def test_group_norm_silu_matches_the_reference_decoder_block():
    block = ResBlock(64, 64)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        block.norm1.weight.copy_(1.0 + 0.3 * torch.randn(64, generator=gen))
        block.norm1.bias.copy_(0.2 * torch.randn(64, generator=gen))
        x = randn(2, 64, 9, 11, seed=5, scale=2.0)
        expected = swish(block.norm1(x.double().cpu().float()).double())
        got = group_norm_silu(x, block.norm1.weight.to(x.device), block.norm1.bias.to(x.device), NORM_GROUPS,
                              NORM_EPS)
    assert_close(got, expected, 1e-5)


def test_group_norm_silu_checks_groups():
    with pytest.raises(ValueError, match="groups"):
        group_norm_silu(randn(1, 48, 2, 2, seed=6), None, None, 32, NORM_EPS)
