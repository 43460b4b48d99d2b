"""``group_norm_silu`` (the token decoder's GroupNorm then swish) and ``token_styled_group_norm`` (its
token-styled GroupNorm: per-(image, channel) scale and shift) against their float64 references and against the
reference decoder's own modules, through the interpreter on the CPU. Fresh seeded random inputs with an offset and
spread far from (0, 1); outputs NaN-poisoned; groups larger and smaller than the kernel's tile (1024 elements
compiled, 16384 under the interpreter; one test forces 64) and not multiples of it; groups split across programs (forced small); affine and affine-free; NCHW and channels-last (NHWC) memory, out of place and in place.
Tolerance: relative error below 1e-5 in float32, 1e-2 in bf16 (GPU only)."""

from __future__ import annotations

import pytest
import torch
from kernel_testing import DEVICE, DTYPES, assert_close, poisoned, randn, tolerance

from bitdance_rt.kernels.group_norm_silu import group_norm_silu, token_styled_group_norm
from bitdance_rt.reference.decoder_ops import group_norm_silu_ref, token_styled_group_norm_ref
from bitdance_rt.reference.token_decoder import (NORM_EPS, NORM_GROUPS, ResBlock, TokenStyledGroupNorm, swish,
                                                 token_statistics)

LAYOUTS = [pytest.param(torch.contiguous_format, id="nchw"), pytest.param(torch.channels_last, id="nhwc")]
SHAPES = [(2, 64, 5, 7), (1, 96, 16, 12), (3, 32, 2, 2), (2, 256, 9, 9)]


def _f64(t):
    return None if t is None else t.double().cpu()


def _poisoned_like(shape, dtype, layout):
    return poisoned(*shape, dtype=dtype).contiguous(memory_format=layout)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "affine_free"])
@pytest.mark.parametrize("shape", SHAPES)
def test_group_norm_silu(shape, affine, layout, dtype):
    x = (randn(*shape, seed=1, dtype=dtype, scale=3.0) + 1.5).contiguous(memory_format=layout)
    channels = shape[1]
    weight = 1.0 + randn(channels, seed=2, dtype=dtype, scale=0.3) if affine else None
    bias = randn(channels, seed=3, dtype=dtype, scale=0.2) if affine else None
    out = _poisoned_like(shape, dtype, layout)
    assert group_norm_silu(x, weight, bias, NORM_GROUPS, NORM_EPS, out=out) is out
    assert_close(out, group_norm_silu_ref(_f64(x), _f64(weight), _f64(bias), NORM_GROUPS, NORM_EPS), tolerance(dtype))
    made = group_norm_silu(x, weight, bias, NORM_GROUPS, NORM_EPS)  # a fresh output keeps x's layout
    assert made.is_contiguous(memory_format=layout) and torch.equal(made, out)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_token_styled_group_norm(shape, layout, dtype):
    x = (randn(*shape, seed=7, dtype=dtype, scale=2.5) - 0.7).contiguous(memory_format=layout)
    scale = 1.0 + randn(shape[0], shape[1], seed=8, dtype=dtype, scale=0.4)
    shift = randn(shape[0], shape[1], seed=9, dtype=dtype, scale=0.3)
    out = _poisoned_like(shape, dtype, layout)
    assert token_styled_group_norm(x, scale, shift, NORM_GROUPS, NORM_EPS, out=out) is out
    expected = token_styled_group_norm_ref(_f64(x), _f64(scale), _f64(shift), NORM_GROUPS, NORM_EPS)
    assert_close(out, expected, tolerance(dtype))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_in_place(layout):
    """``out=x``: each element is read, then written by the program that owns its group."""
    x = (randn(2, 64, 33, 40, seed=10, scale=2.0) + 0.5).contiguous(memory_format=layout)
    weight, bias = 1.0 + randn(64, seed=11, scale=0.3), randn(64, seed=12, scale=0.2)
    expected = group_norm_silu_ref(_f64(x), _f64(weight), _f64(bias), NORM_GROUPS, NORM_EPS)
    assert group_norm_silu(x, weight, bias, NORM_GROUPS, NORM_EPS, out=x) is x
    assert_close(x, expected, 1e-5)
    scale, shift = 1.0 + randn(2, 64, seed=13, scale=0.4), randn(2, 64, seed=14, scale=0.3)
    expected = token_styled_group_norm_ref(_f64(x), _f64(scale), _f64(shift), NORM_GROUPS, NORM_EPS)
    assert token_styled_group_norm(x, scale, shift, NORM_GROUPS, NORM_EPS, out=x) is x
    assert_close(x, expected, 1e-5)


@pytest.mark.parametrize("split", [False, True], ids=["one_program", "split"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_groups_walked_in_many_tiles(layout, split, monkeypatch):
    """Tiles of 64 elements (the interpreter otherwise takes 16384): every group spans many tiles, and ragged ones;
    ``split``: groups above 100 elements are cut into spans (NCHW: 4 spans of 128, 128, 128, 45 elements; NHWC: 3 of
    48, 48, 47 pixels) normalized by programs of their own from merged partial statistics."""
    import bitdance_rt.kernels.group_norm_silu as module

    monkeypatch.setattr(module, "BLOCK", 64)
    monkeypatch.setattr(module, "INTERPRETER_BLOCK", 64)
    if split:
        monkeypatch.setattr(module, "SPLIT_ELEMENTS", 100)
        monkeypatch.setattr(module, "INTERPRETER_SPLIT_ELEMENTS", 100)
    x = (randn(1, 96, 13, 11, seed=17, scale=2.0) + 0.5).contiguous(memory_format=layout)  # 32 groups of 429
    weight, bias = 1.0 + randn(96, seed=18, scale=0.3), randn(96, seed=19, scale=0.2)
    out = _poisoned_like(x.shape, torch.float32, layout)
    group_norm_silu(x, weight, bias, NORM_GROUPS, NORM_EPS, out=out)
    assert_close(out, group_norm_silu_ref(_f64(x), _f64(weight), _f64(bias), NORM_GROUPS, NORM_EPS), 1e-5)
    scale, shift = 1.0 + randn(1, 96, seed=20, scale=0.4), randn(1, 96, seed=21, scale=0.3)
    out = _poisoned_like(x.shape, torch.float32, layout)
    token_styled_group_norm(x, scale, shift, NORM_GROUPS, NORM_EPS, out=out)
    assert_close(out, token_styled_group_norm_ref(_f64(x), _f64(scale), _f64(shift), NORM_GROUPS, NORM_EPS), 1e-5)


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


def test_token_styled_group_norm_matches_the_reference_module():
    styled = TokenStyledGroupNorm(32, 64)
    z = randn(2, 32, 4, 4, seed=15).sign().cpu()
    x = randn(2, 64, 8, 8, seed=16, scale=2.0).cpu()
    with torch.no_grad():
        std, mean = token_statistics(z)
        expected = styled(x, std, mean)
        scale, shift = styled.gamma(std), styled.beta(mean)
        got = token_styled_group_norm(x.to(DEVICE), scale.to(DEVICE), shift.to(DEVICE), NORM_GROUPS, NORM_EPS)
    assert_close(got, expected.double(), 1e-5)


def test_checks_groups_and_layout():
    with pytest.raises(ValueError, match="groups"):
        group_norm_silu(randn(1, 48, 2, 2, seed=6), None, None, 32, NORM_EPS)
    strided = randn(1, 64, 4, 8, seed=6)[:, :, :, ::2]
    with pytest.raises(ValueError, match="channels-last"):
        group_norm_silu(strided, None, None, 32, NORM_EPS)
    x = randn(1, 64, 4, 4, seed=6)
    with pytest.raises(ValueError, match="layout"):
        group_norm_silu(x, None, None, 32, NORM_EPS,
                        out=torch.empty_like(x).contiguous(memory_format=torch.channels_last))
    with pytest.raises(ValueError, match="scale"):
        token_styled_group_norm(x, randn(1, 32, seed=6), randn(1, 64, seed=6), 32, NORM_EPS)
