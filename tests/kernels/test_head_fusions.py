"""The diffusion head's step fusions (LayerNorm + adaLN modulation, gated residual, SwiGLU, patch attention)
against their float64 references in ``bitdance_rt.reference.head_ops``, and composed into whole TransBlock /
ResBlock / FinalLayer forwards against the reference modules.

Inputs are fresh seeded random tensors; modulation operands are strided chunks of one adaLN output ``[N, 6D]``
(or ``[N, 3D]``), as the head produces them. Outputs are NaN-poisoned before each launch; where ``out`` is a view
into a wider buffer, the columns outside it must stay NaN (no stray writes). Widths are not powers of two and
cross the kernels' tiles (1024 columns for the elementwise kernels, whose tiles also hold up to 16 narrow rows:
row counts that are not multiples of the row tile are covered). Tolerance: relative error
``||out − ref|| / ||ref||`` below 1e-5 in float32 (measured ≤ 1e-6), 1e-2 in bf16 (GPU only).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_testing import DEVICE, DTYPES, FLOAT32_TOL, assert_close, poisoned, randn, tolerance

from bitdance_rt.kernels.gated_residual import gated_residual
from bitdance_rt.kernels.layernorm_modulate import MAX_WIDTH, layernorm_modulate
from bitdance_rt.kernels.patch_attention import patch_attention
from bitdance_rt.kernels.swiglu import swiglu
from bitdance_rt.reference.diffusion_head import LN_EPS, DiffusionHeadConfig, FinalLayer, ResBlock, TransBlock
from bitdance_rt.reference.head_ops import (gated_residual_ref, layernorm_modulate_ref, patch_attention_ref,
                                            swiglu_ref)

ROWS = 7


def f64(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().to("cpu", torch.float64)


def adaln_chunks(rows: int, width: int, parts: int, seed: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """The ``parts`` row-strided ``[rows, width]`` chunks of one adaLN output ``[rows, parts·width]``."""
    return randn(rows, parts * width, seed=seed, dtype=dtype, scale=0.5).chunk(parts, dim=-1)


def ln_affine(width: int, seed: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    return 1.0 + randn(width, seed=seed, dtype=dtype, scale=0.2), randn(width, seed=seed + 1, dtype=dtype, scale=0.1)


# ---------------------------------------------------------------- layernorm_modulate

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "affine_free"])
@pytest.mark.parametrize("width", [96, 320, 1500])
def test_layernorm_modulate(width, affine, dtype):
    # an offset and a spread far from (0, 1) so that the normalisation itself is exercised
    x = randn(ROWS, width, seed=1, dtype=dtype, scale=3.0) + 1.5
    scale, shift, *_ = adaln_chunks(ROWS, width, 6, seed=2, dtype=dtype)
    assert scale.stride(0) == 6 * width
    weight, bias = ln_affine(width, seed=3, dtype=dtype) if affine else (None, None)
    out = poisoned(ROWS, width, dtype=dtype)
    got = layernorm_modulate(x, scale, shift, weight, bias, LN_EPS, out=out)
    assert got is out
    expected = layernorm_modulate_ref(f64(x), f64(scale), f64(shift), f64(weight), f64(bias), LN_EPS)
    assert_close(out, expected, tolerance(dtype))


def test_layernorm_modulate_strided_rows_and_fresh_output():
    """x and out as row-strided views into wider buffers; the buffer outside ``out`` stays poisoned. With
    ``out=None`` a fresh tensor comes back with the same values."""
    width = 200
    x = randn(ROWS, 2 * width, seed=4)[:, width:]
    scale, shift, _ = adaln_chunks(ROWS, width, 3, seed=5, dtype=torch.float32)
    weight, bias = ln_affine(width, seed=6, dtype=torch.float32)
    buffer = poisoned(ROWS, 3 * width)
    layernorm_modulate(x, scale, shift, weight, bias, LN_EPS, out=buffer[:, width:2 * width])
    expected = layernorm_modulate_ref(f64(x), f64(scale), f64(shift), f64(weight), f64(bias), LN_EPS)
    assert_close(buffer[:, width:2 * width], expected, FLOAT32_TOL)
    assert buffer[:, :width].isnan().all() and buffer[:, 2 * width:].isnan().all()
    fresh = layernorm_modulate(x, scale, shift, weight, bias, LN_EPS)
    assert fresh.shape == (ROWS, width) and fresh.is_contiguous()
    assert torch.equal(fresh, buffer[:, width:2 * width])


def test_layernorm_modulate_eps_matters():
    """Rows of variance ~1e-6: eps 1e-6 and 1e-5 give different outputs, and the kernel follows eps."""
    width = 64
    x = randn(2, width, seed=7, scale=1e-3)
    scale, shift = adaln_chunks(2, width, 2, seed=8, dtype=torch.float32)
    for eps in (1e-6, 1e-5):
        got = layernorm_modulate(x, scale, shift, None, None, eps)
        assert_close(got, layernorm_modulate_ref(f64(x), f64(scale), f64(shift), None, None, eps), FLOAT32_TOL)
    assert not torch.allclose(layernorm_modulate(x, scale, shift, None, None, 1e-6),
                              layernorm_modulate(x, scale, shift, None, None, 1e-5), rtol=1e-3)


# ---------------------------------------------------------------- gated_residual

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", [96, 320, 1500])
def test_gated_residual(width, dtype):
    x = randn(ROWS, width, seed=10, dtype=dtype)
    h = randn(ROWS, width, seed=11, dtype=dtype)
    gate = adaln_chunks(ROWS, width, 6, seed=12, dtype=dtype)[5]
    out = poisoned(ROWS, width, dtype=dtype)
    assert gated_residual(x, h, gate, out=out) is out
    assert_close(out, gated_residual_ref(f64(x), f64(h), f64(gate)), tolerance(dtype))


def test_gated_residual_in_place_and_strided_output():
    width = 1100
    x = randn(ROWS, width, seed=13)
    h = randn(ROWS, 2 * width, seed=14)[:, :width]
    gate = adaln_chunks(ROWS, width, 3, seed=15, dtype=torch.float32)[2]
    expected = gated_residual_ref(f64(x), f64(h), f64(gate))
    buffer = poisoned(ROWS, width + 5)
    gated_residual(x, h, gate, out=buffer[:, 5:])
    assert_close(buffer[:, 5:], expected, FLOAT32_TOL)
    assert buffer[:, :5].isnan().all()
    assert gated_residual(x, h, gate, out=x) is x
    assert torch.equal(x, buffer[:, 5:])


@pytest.mark.parametrize("rows,width", [(37, 200), (22, 1100), (1, 60)])
def test_gated_residual_row_tiles(rows, width):
    """Row tiles (16 rows of <= 256 columns, 4 of 1024): row counts that end inside a tile, ``out`` a view into a
    buffer with spare columns and rows that must stay poisoned, then in place."""
    x = randn(rows, width, seed=16)
    h = randn(rows, width, seed=17)
    gate = adaln_chunks(rows, width, 6, seed=18, dtype=torch.float32)[4]
    expected = gated_residual_ref(f64(x), f64(h), f64(gate))
    buffer = poisoned(rows + 3, width + 7)
    gated_residual(x, h, gate, out=buffer[:rows, 7:])
    assert_close(buffer[:rows, 7:], expected, FLOAT32_TOL)
    assert buffer[:, :7].isnan().all() and buffer[rows:].isnan().all()
    assert gated_residual(x, h, gate, out=x) is x
    assert torch.equal(x, buffer[:rows, 7:])


# ---------------------------------------------------------------- swiglu

@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # the interpreter's exp(200)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [96, 480, 1500])
def test_swiglu(hidden, dtype):
    ab = randn(ROWS, 2 * hidden, seed=20, dtype=dtype, scale=3.0)
    ab[0, :4] = torch.tensor([-200.0, -90.0, 90.0, 200.0], dtype=dtype, device=DEVICE)  # exp(−a) overflows; silu stays finite
    out = poisoned(ROWS, hidden, dtype=dtype)
    assert swiglu(ab, out=out) is out
    assert_close(out, swiglu_ref(f64(ab)), tolerance(dtype))


def test_swiglu_strided_rows():
    hidden = 130
    ab = randn(ROWS, 3 * hidden, seed=21)[:, hidden:]
    got = swiglu(ab)
    assert got.shape == (ROWS, hidden)
    assert_close(got, swiglu_ref(f64(ab)), FLOAT32_TOL)


@pytest.mark.parametrize("rows,hidden", [(37, 192), (9, 1500), (1, 24)])
def test_swiglu_row_tiles(rows, hidden):
    """Row tiles (16 rows of <= 256 columns; 4 rows of 1024 columns, two column tiles for H = 1500): row counts
    that end inside a tile, ``ab`` row-strided, ``out`` a view into a buffer whose spare columns and rows stay
    poisoned."""
    ab = randn(rows, 2 * hidden + 5, seed=22, scale=3.0)[:, 5:]
    buffer = poisoned(rows + 2, hidden + 3)
    out = buffer[:rows, 3:]
    assert swiglu(ab, out=out) is out
    assert_close(buffer[:rows, 3:], swiglu_ref(f64(ab)), FLOAT32_TOL)
    assert buffer[:, :3].isnan().all() and buffer[rows:].isnan().all()


# ---------------------------------------------------------------- patch_attention

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("patch", [1, 4, 16, 64])
def test_patch_attention(patch, head_dim, dtype):
    rows, heads = 3, 2
    # scale 2: scores of a few units, so the softmax is neither uniform nor one-hot
    qkv = randn(rows, patch, 3 * heads * head_dim, seed=30 + patch, dtype=dtype, scale=2.0)
    out = poisoned(rows, patch, heads * head_dim, dtype=dtype)
    assert patch_attention(qkv, head_dim, out=out) is out
    assert_close(out, patch_attention_ref(f64(qkv), head_dim), tolerance(dtype))


@pytest.mark.parametrize("patch,head_dim", [(5, 64), (33, 40)])
def test_patch_attention_ragged_tiles(patch, head_dim):
    """P and head_dim that are not powers of two (padded tiles), qkv with padded token and row strides, and out
    a view into a wider buffer whose other columns stay poisoned."""
    rows, heads = 2, 3
    width = heads * head_dim
    qkv = randn(rows, patch + 1, 3 * width + 8, seed=40, scale=2.0)[:, 1:, 8:]
    buffer = poisoned(rows, patch, width + 16)
    patch_attention(qkv, head_dim, out=buffer[:, :, 16:])
    assert_close(buffer[:, :, 16:], patch_attention_ref(f64(qkv), head_dim), FLOAT32_TOL)
    assert buffer[:, :, :16].isnan().all()


def test_patch_attention_single_token_returns_v():
    """With one token per patch the softmax weight is exactly 1: the output is v bit for bit."""
    qkv = randn(4, 1, 3 * 128, seed=41)
    assert torch.equal(patch_attention(qkv, 64), qkv[:, :, 256:])


def test_empty_inputs_give_empty_outputs():
    """Zero rows launch nothing and return the (empty) output."""
    x = randn(0, 32, seed=45)
    assert layernorm_modulate(x, x, x, None, None, LN_EPS).shape == (0, 32)
    assert gated_residual(x, x, x).shape == (0, 32)
    assert swiglu(x).shape == (0, 16)
    assert patch_attention(randn(0, 4, 3 * 64, seed=46), 32).shape == (0, 4, 64)


# ---------------------------------------------------------------- argument errors

def test_layernorm_modulate_argument_errors():
    x = randn(4, 32, seed=50)
    scale, shift = adaln_chunks(4, 32, 2, seed=51, dtype=torch.float32)
    weight, bias = ln_affine(32, seed=52, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"layernorm_modulate: scale has shape \[4, 31\], expected \[4, 32\]"):
        layernorm_modulate(x, scale[:, :31], shift, weight, bias, LN_EPS)
    with pytest.raises(ValueError, match="layernorm_modulate: shift has dtype torch.float64"):
        layernorm_modulate(x, scale, shift.double(), weight, bias, LN_EPS)
    with pytest.raises(ValueError, match="layernorm_modulate: scale has channel stride 2, expected 1"):
        layernorm_modulate(x, randn(4, 64, seed=53)[:, ::2], shift, weight, bias, LN_EPS)
    with pytest.raises(ValueError, match="weight is given but bias is None"):
        layernorm_modulate(x, scale, shift, weight, None, LN_EPS)
    with pytest.raises(ValueError, match=r"layernorm_modulate: weight has shape \[31\], expected \[32\]"):
        layernorm_modulate(x, scale, shift, weight[:31], bias, LN_EPS)
    with pytest.raises(ValueError, match="layernorm_modulate: eps is 0.0, expected a positive"):
        layernorm_modulate(x, scale, shift, weight, bias, 0.0)
    with pytest.raises(ValueError, match=r"layernorm_modulate: out has shape \[4, 33\]"):
        layernorm_modulate(x, scale, shift, weight, bias, LN_EPS, out=poisoned(4, 33))
    with pytest.raises(ValueError, match="layernorm_modulate: x has dtype torch.int32"):
        layernorm_modulate(x.int(), scale, shift, weight, bias, LN_EPS)
    wide = torch.zeros(1, MAX_WIDTH + 1, device=DEVICE)
    with pytest.raises(ValueError, match=f"x has {MAX_WIDTH + 1} channels, expected 1..{MAX_WIDTH}"):
        layernorm_modulate(wide, wide, wide, None, None, LN_EPS)
    with pytest.raises(TypeError, match="layernorm_modulate: x must be a torch.Tensor"):
        layernorm_modulate(x.tolist(), scale, shift, weight, bias, LN_EPS)


def test_elementwise_argument_errors():
    x, h = randn(4, 32, seed=60), randn(4, 32, seed=61)
    with pytest.raises(ValueError, match=r"gated_residual: gate has shape \[4, 16\], expected \[4, 32\]"):
        gated_residual(x, h, h[:, :16])
    with pytest.raises(ValueError, match="gated_residual: h has dtype torch.float64, expected torch.float32"):
        gated_residual(x, h.double(), h)
    with pytest.raises(ValueError, match="gated_residual: gate has channel stride 4, expected 1"):
        gated_residual(x, h, randn(4, 128, seed=62)[:, ::4])
    with pytest.raises(ValueError, match=r"gated_residual: out has shape \[3, 32\]"):
        gated_residual(x, h, h, out=poisoned(3, 32))
    with pytest.raises(ValueError, match="swiglu: ab has 33 channels, expected an even number"):
        swiglu(randn(4, 33, seed=63))
    with pytest.raises(ValueError, match=r"swiglu: out has shape \[4, 32\], expected \[4, 16\]"):
        swiglu(x, out=poisoned(4, 32))
    with pytest.raises(ValueError, match="swiglu: ab has channel stride 2, expected 1"):
        swiglu(randn(4, 64, seed=64)[:, ::2])


def test_patch_attention_argument_errors():
    qkv = randn(2, 4, 3 * 128, seed=70)
    with pytest.raises(ValueError, match="patch_attention: qkv has 65 tokens per patch, expected 1..64"):
        patch_attention(torch.zeros(1, 65, 3 * 64, device=DEVICE), 64)
    with pytest.raises(ValueError, match="patch_attention: qkv has 100 channels, expected 3·D"):
        patch_attention(qkv[:, :, :100], 64)
    with pytest.raises(ValueError, match="patch_attention: head_dim is 48, expected a positive divisor of D = 128"):
        patch_attention(qkv, 48)
    with pytest.raises(ValueError, match=r"patch_attention: qkv has shape \[2, 384\], expected \[\*, \*, \*\]"):
        patch_attention(qkv[:, 0], 64)
    with pytest.raises(ValueError, match="patch_attention: qkv has channel stride 2, expected 1"):
        patch_attention(randn(2, 4, 6 * 128, seed=71)[:, :, ::2], 64)
    with pytest.raises(ValueError, match=r"patch_attention: out has shape \[2, 4, 64\], expected \[2, 4, 128\]"):
        patch_attention(qkv, 64, out=poisoned(2, 4, 64))
    with pytest.raises(ValueError, match="patch_attention: out has dtype torch.float64"):
        patch_attention(qkv, 64, out=poisoned(2, 4, 128, dtype=torch.float64))


# ---------------------------------------------------------------- composed blocks vs the reference modules

def random_module(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter random (weights ~ N(0, 1/fan_in), biases ~ N(0, 0.1²), LayerNorm affine around (1, 0)),
    in float64 on the CPU. Built on the meta device, so no default initialisation touches the global generator."""
    module = module.to_empty(device="cpu").to(torch.float64)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            if "norm" in name:
                p.copy_(1.0 + 0.2 * noise if name.endswith("weight") else 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise / p.shape[1] ** 0.5)
    return module.eval()


def linear(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, layer.weight.to(DEVICE, torch.float32), layer.bias.to(DEVICE, torch.float32))


def norm_params(norm: torch.nn.LayerNorm) -> tuple[torch.Tensor, torch.Tensor, float]:
    return norm.weight.to(DEVICE, torch.float32), norm.bias.to(DEVICE, torch.float32), norm.eps


def kernel_trans_block(block: TransBlock, x: torch.Tensor, mod: torch.Tensor, head_dim: int) -> torch.Tensor:
    """TransBlock.forward through the kernels, linears by torch: x ``[R, P, D]``, mod ``[R, P, 6D]``."""
    rows, patch, width = x.shape
    scale1, shift1, gate1, scale2, shift2, gate2 = mod.reshape(rows * patch, 6 * width).chunk(6, dim=-1)
    stream = x.reshape(rows * patch, width)
    h = layernorm_modulate(stream, scale1, shift1, *norm_params(block.norm1))
    qkv = linear(block.attn.wqkv, h).view(rows, patch, 3 * width)
    attended = patch_attention(qkv, head_dim).view(rows * patch, width)
    stream = gated_residual(stream, linear(block.attn.wo, attended), gate1)
    h = layernorm_modulate(stream, scale2, shift2, *norm_params(block.norm2))
    gated_residual(stream, linear(block.w2, swiglu(linear(block.w1, h))), gate2, out=stream)
    return stream.view(rows, patch, width)


@pytest.mark.parametrize("width,head_dim,patch", [(320, 64, 16), (256, 128, 4)])
def test_trans_block_composed_from_kernels(width, head_dim, patch):
    cfg = DiffusionHeadConfig(token_channels=8, cond_channels=8, width=width, depth=1, num_adaln=1,
                              block_kind="trans", attn_head_dim=head_dim)
    with torch.device("meta"):
        block = TransBlock(cfg)
    block = random_module(block, seed=80)
    rows = 3
    x = randn(rows, patch, width, seed=81, dtype=torch.float64, device="cpu")
    mod = randn(rows, patch, 6 * width, seed=82, dtype=torch.float64, scale=0.5, device="cpu")
    with torch.no_grad():
        expected = block(x, mod.chunk(6, dim=-1))
        got = kernel_trans_block(block, x.to(DEVICE, torch.float32), mod.to(DEVICE, torch.float32), head_dim)
    assert_close(got, expected, FLOAT32_TOL)


def test_res_block_and_final_layer_composed_from_kernels():
    """The P = 1 head's ResBlock (affine LN, 3D adaLN) and the final layer (affine-free LN, 2D adaLN)."""
    width, tokens = 96, 9
    cfg = DiffusionHeadConfig(token_channels=8, cond_channels=8, width=width, depth=1, num_adaln=1,
                              block_kind="res")
    with torch.device("meta"):
        block, final = ResBlock(cfg), FinalLayer(width, 8)
    block, final = random_module(block, seed=90), random_module(final, seed=91)
    x = randn(tokens, 1, width, seed=92, dtype=torch.float64, device="cpu")
    mod = randn(tokens, 1, 3 * width, seed=93, dtype=torch.float64, scale=0.5, device="cpu")
    y = randn(tokens, 1, width, seed=94, dtype=torch.float64, device="cpu")
    with torch.no_grad():
        expected = final(block(x, mod.chunk(3, dim=-1)), y)
        scale, shift, gate = mod.to(DEVICE, torch.float32).view(tokens, 3 * width).chunk(3, dim=-1)
        stream = x.to(DEVICE, torch.float32).view(tokens, width)
        h = layernorm_modulate(stream, scale, shift, *norm_params(block.norm))
        stream = gated_residual(stream, linear(block.w2, swiglu(linear(block.w1, h))), gate)
        final_scale, final_shift = linear(final.ada_ln_modulation, y.to(DEVICE, torch.float32).view(tokens, width)
                                          ).chunk(2, dim=-1)
        got = linear(final.linear, layernorm_modulate(stream, final_scale, final_shift, None, None, LN_EPS))
    assert_close(got.view(tokens, 1, 8), expected, FLOAT32_TOL)
