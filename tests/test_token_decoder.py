"""Tests of the binary-token decoder: an independent float64 re-derivation, the release's layout rules, loading."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from bitdance_rt.errors import CheckpointError, InvalidRequestError
from bitdance_rt.reference.token_decoder import (
    DecoderLayout,
    TokenDecoder,
    depth_to_space,
    expected_shapes,
    infer_layout,
    layout_from_ddconfig,
    token_statistics,
)

TINY = DecoderLayout(z_channels=32, level_channels=(32, 32, 64), num_res_blocks=1, out_channels=3, gan_decoder=False)
TINY_GAN = DecoderLayout(z_channels=32, level_channels=(32, 64, 64), num_res_blocks=2, out_channels=3,
                         gan_decoder=True)
FLOAT64_TOL = 1e-10
FLOAT32_TOL = 1e-4


def random_tokens(batch: int, channels: int, h: int, w: int, seed: int, dtype=torch.float64) -> Tensor:
    """±1 tokens with about one entry in ten set to exactly 0 (torch.sign of an exact 0.0)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, channels, h, w, generator=g, dtype=torch.float64).sign()
    z[torch.rand(z.shape, generator=g, dtype=torch.float64) < 0.1] = 0.0
    return z.to(dtype)


def randomized_decoder(layout: DecoderLayout, seed: int, dtype=torch.float64) -> TokenDecoder:
    """A decoder whose every parameter, norm affines included, is a fresh random draw."""
    g = torch.Generator().manual_seed(seed)
    decoder = TokenDecoder(layout).to(dtype)
    with torch.no_grad():
        for name, p in decoder.named_parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) / p[0].numel() ** 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return decoder


# ---- an independent functional re-derivation (float64, explicit formulas) ----

def ref_group_norm(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
    b, c, h, w = x.shape
    groups = x.reshape(b, 32, (c // 32) * h * w)
    mean = groups.sum(-1, keepdim=True) / groups.shape[-1]
    var = ((groups - mean) ** 2).sum(-1, keepdim=True) / groups.shape[-1]
    y = ((groups - mean) / torch.sqrt(var + 1e-6)).reshape(b, c, h, w)
    if weight is None:
        return y
    return y * weight[None, :, None, None] + bias[None, :, None, None]


def ref_swish(x: Tensor) -> Tensor:
    return x / (1.0 + torch.exp(-x))


def ref_depth_to_space(x: Tensor) -> Tensor:
    b, c4, h, w = x.shape
    c = c4 // 4
    out = x.new_empty(b, c, 2 * h, 2 * w)
    for i in range(2):
        for j in range(2):
            out[:, :, i::2, j::2] = x[:, (2 * i + j) * c:(2 * i + j + 1) * c]
    return out


def ref_res_block(s: dict[str, Tensor], prefix: str, x: Tensor) -> Tensor:
    h = ref_swish(ref_group_norm(x, s[f"{prefix}.norm1.weight"], s[f"{prefix}.norm1.bias"]))
    h = F.conv2d(h, s[f"{prefix}.conv1.weight"], padding=1)
    h = ref_swish(ref_group_norm(h, s[f"{prefix}.norm2.weight"], s[f"{prefix}.norm2.bias"]))
    h = F.conv2d(h, s[f"{prefix}.conv2.weight"], padding=1)
    shortcut_key = f"{prefix}.nin_shortcut.weight"
    return h + (F.conv2d(x, s[shortcut_key]) if shortcut_key in s else x)


def ref_styled_norm(s: dict[str, Tensor], prefix: str, x: Tensor, z: Tensor, bessel: bool) -> Tensor:
    b, c, h, w = z.shape
    n = h * w
    flat = z.reshape(b, c, n)
    mean = flat.sum(-1) / n
    var = ((flat - mean[..., None]) ** 2).sum(-1) / (n - 1 if bessel else n)
    scale = torch.sqrt(var + 1e-6) @ s[f"{prefix}.gamma.weight"].T + s[f"{prefix}.gamma.bias"]
    shift = mean @ s[f"{prefix}.beta.weight"].T + s[f"{prefix}.beta.bias"]
    return ref_group_norm(x) * scale[:, :, None, None] + shift[:, :, None, None]


def ref_decode(s: dict[str, Tensor], layout: DecoderLayout, z: Tensor, noise: Tensor | None = None,
               bessel: bool = True) -> Tensor:
    s = {k: v.to(torch.float64) for k, v in s.items()}
    z = z.to(torch.float64)
    x = z if noise is None else torch.cat([z, noise.to(torch.float64)], dim=1)
    x = F.conv2d(x, s["conv_in.weight"], s["conv_in.bias"], padding=1)
    for r in range(layout.num_res_blocks):
        x = ref_res_block(s, f"mid_block.{r}", x)
    for level in reversed(range(len(layout.level_channels))):
        x = ref_styled_norm(s, f"adaptive.{level}", x, z, bessel)
        for r in range(layout.num_res_blocks):
            x = ref_res_block(s, f"up.{level}.block.{r}", x)
        if level > 0:
            x = F.conv2d(x, s[f"up.{level}.upsample.conv1.weight"], s[f"up.{level}.upsample.conv1.bias"], padding=1)
            x = ref_depth_to_space(x)
    x = ref_swish(ref_group_norm(x, s["norm_out.weight"], s["norm_out.bias"]))
    return F.conv2d(x, s["conv_out.weight"], s["conv_out.bias"], padding=1)


# ---- layout and keys ----

def test_keys_follow_the_release_constructor() -> None:
    # Release Decoder.__init__: the styled norm of level i sees the width entering level i (the deeper level's
    # width, the deepest's own at L-1); a level's first ResBlock changes the width (1x1 shortcut when it does);
    # the upsampler of level i > 0 works at level i's width.
    shapes = expected_shapes(TINY)
    assert shapes["conv_in.weight"] == (64, 32, 3, 3)
    assert shapes["mid_block.0.conv1.weight"] == (64, 64, 3, 3)
    assert [shapes[f"adaptive.{i}.gamma.weight"] for i in range(3)] == [(32, 32), (64, 32), (64, 32)]
    assert [shapes[f"adaptive.{i}.beta.bias"] for i in range(3)] == [(32,), (64,), (64,)]
    assert [k for k in shapes if "nin_shortcut" in k] == ["up.1.block.0.nin_shortcut.weight"]
    assert shapes["up.1.block.0.nin_shortcut.weight"] == (32, 64, 1, 1)
    assert shapes["up.1.block.0.norm1.weight"] == (64,) and shapes["up.1.block.0.norm2.weight"] == (32,)
    assert shapes["up.2.upsample.conv1.weight"] == (256, 64, 3, 3)
    assert shapes["up.1.upsample.conv1.weight"] == (128, 32, 3, 3)
    assert "up.0.upsample.conv1.weight" not in shapes
    assert shapes["norm_out.weight"] == (32,) and shapes["conv_out.weight"] == (3, 32, 3, 3)
    assert len(shapes) == 47
    decoder_shapes = {k: tuple(v.shape) for k, v in TokenDecoder(TINY).state_dict().items()}
    assert list(decoder_shapes.items()) == list(shapes.items())
    assert TINY.downsample == 4


LAYOUTS = [
    TINY,
    TINY_GAN,
    DecoderLayout(16, (64, 32), 2, 4, True),
    DecoderLayout(32, (32,), 1, 3, False),
    DecoderLayout(32, (32, 32, 64, 64, 128), 1, 3, False),
]


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_infer_layout_and_ddconfig_agree(layout: DecoderLayout) -> None:
    with torch.device("meta"):
        state = TokenDecoder(layout).state_dict()
    assert infer_layout(state, "test.safetensors") == layout
    ddconfig = {"double_z": False, "z_channels": layout.z_channels, "in_channels": 3,
                "out_ch": layout.out_channels, "ch": 32, "ch_mult": [c // 32 for c in layout.level_channels],
                "num_res_blocks": layout.num_res_blocks}
    assert layout_from_ddconfig(ddconfig, layout.gan_decoder, "ae_config.json") == layout
    assert layout.downsample == 2 ** (len(layout.level_channels) - 1)


def tiny_state() -> dict[str, Tensor]:
    with torch.device("meta"):
        return dict(TokenDecoder(TINY_GAN).state_dict())


@pytest.mark.parametrize("key", ["conv_in.weight", "adaptive.0.gamma.weight", "up.1.block.1.conv2.weight",
                                 "adaptive.2.beta.bias", "up.0.block.0.nin_shortcut.weight", "conv_out.bias"])
def test_missing_key_is_named(key: str) -> None:
    state = tiny_state()
    del state[key]
    with pytest.raises(CheckpointError, match=rf"ae_d16c32\.pt.*'{key}'"):
        infer_layout(state, "ae_d16c32.pt")


@pytest.mark.parametrize("key", ["mid_block.1.norm2.bias", "up.2.upsample.conv1.weight", "adaptive.1.beta.weight"])
def test_misshaped_key_is_named(key: str) -> None:
    state = tiny_state()
    state[key] = torch.empty(*state[key].shape[:-1], state[key].shape[-1] + 1, device="meta")
    with pytest.raises(CheckpointError, match=rf"ae\.safetensors.*'{key}'"):
        infer_layout(state, "ae.safetensors")


def test_unexpected_and_prefixed_keys_are_named() -> None:
    state = tiny_state()
    state["quantize.codebook"] = torch.empty(4, device="meta")
    with pytest.raises(CheckpointError, match="'quantize.codebook'"):
        infer_layout(state, "ae.safetensors")
    prefixed = {f"decoder.{k}": v for k, v in tiny_state().items()}
    with pytest.raises(CheckpointError, match="'decoder.' prefix"):
        infer_layout(prefixed, "ae.safetensors")


def test_bad_ddconfig_is_named() -> None:
    good = {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "z_channels": 32, "out_ch": 3}
    with pytest.raises(CheckpointError, match="ae_config.json.*'ch_mult'"):
        layout_from_ddconfig({k: v for k, v in good.items() if k != "ch_mult"}, False, "ae_config.json")
    with pytest.raises(CheckpointError, match="ae_config.json.*GroupNorm"):
        layout_from_ddconfig({**good, "ch": 48}, False, "ae_config.json")


# ---- numerics ----

def test_depth_to_space_index_formula() -> None:
    g = torch.Generator().manual_seed(1)
    c, h, w = 3, 3, 5
    x = torch.randn(2, 4 * c, h, w, generator=g)
    out = depth_to_space(x)
    assert out.shape == (2, c, 2 * h, 2 * w)
    for b in range(2):
        for ch in range(c):
            for y in range(h):
                for xx in range(w):
                    for i in range(2):
                        for j in range(2):
                            assert out[b, ch, 2 * y + i, 2 * xx + j] == x[b, (i * 2 + j) * c + ch, y, xx]


@pytest.mark.parametrize("layout", [TINY, TINY_GAN], ids=["plain", "gan"])
def test_matches_functional_reference(layout: DecoderLayout) -> None:
    decoder = randomized_decoder(layout, seed=2)
    state = decoder.state_dict()
    z = random_tokens(2, layout.z_channels, 8, 8, seed=3)
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        out = decoder(z, torch.Generator().manual_seed(4))
    expected = ref_decode(state, layout, z, noise if layout.gan_decoder else None)
    assert out.shape == (2, 3, 32, 32)
    assert expected.abs().max() > 0.5  # the comparison is not between two near-zero maps
    torch.testing.assert_close(out, expected, atol=FLOAT64_TOL, rtol=FLOAT64_TOL)

    decoder32 = decoder.float()
    z32 = z.float()
    noise32 = torch.randn(z.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float32)
    with torch.no_grad():
        out32 = decoder32(z32, torch.Generator().manual_seed(4))
    assert out32.dtype == torch.float32
    expected32 = ref_decode(decoder32.state_dict(), layout, z32, noise32 if layout.gan_decoder else None)
    torch.testing.assert_close(out32.double(), expected32, atol=FLOAT32_TOL, rtol=FLOAT32_TOL)


def test_token_variance_is_bessel_corrected() -> None:
    # A 2x2 grid: the Bessel-corrected variance is 4/3 of the biased one.
    decoder = randomized_decoder(TINY, seed=5)
    z = random_tokens(1, 32, 2, 2, seed=6)
    std, mean = token_statistics(z)
    flat = z.reshape(1, 32, 4)
    torch.testing.assert_close(std ** 2 - 1e-6, ((flat - flat.mean(-1, keepdim=True)) ** 2).sum(-1) / 3,
                               atol=FLOAT64_TOL, rtol=FLOAT64_TOL)
    torch.testing.assert_close(mean, flat.mean(-1), atol=FLOAT64_TOL, rtol=FLOAT64_TOL)
    with torch.no_grad():
        out = decoder(z)
    state = decoder.state_dict()
    torch.testing.assert_close(out, ref_decode(state, TINY, z), atol=FLOAT64_TOL, rtol=FLOAT64_TOL)
    assert (out - ref_decode(state, TINY, z, bessel=False)).abs().max() > 1e-2


def test_meta_construction_and_assign_load() -> None:
    source = randomized_decoder(TINY, seed=7, dtype=torch.float32)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    with torch.device("meta"):
        decoder = TokenDecoder(TINY)
    decoder.load_state_dict(state, strict=True, assign=True)
    z = random_tokens(1, 32, 4, 6, seed=8, dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(decoder(z), source(z))


def test_gan_noise_comes_from_the_generator() -> None:
    decoder = randomized_decoder(TINY_GAN, seed=9, dtype=torch.float32)
    z = random_tokens(1, 32, 4, 4, seed=10, dtype=torch.float32)
    with torch.no_grad():
        first = decoder(z, torch.Generator().manual_seed(11))
        again = decoder(z, torch.Generator().manual_seed(11))
        other = decoder(z, torch.Generator().manual_seed(12))
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 1e-3
    with pytest.raises(InvalidRequestError, match="generator"):
        decoder(z)


def test_plain_decoder_ignores_generator() -> None:
    decoder = randomized_decoder(TINY, seed=13, dtype=torch.float32)
    z = random_tokens(1, 32, 4, 4, seed=14, dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(decoder(z), decoder(z, torch.Generator().manual_seed(15)))


def test_bad_token_maps_are_rejected() -> None:
    decoder = TokenDecoder(TINY)
    with pytest.raises(InvalidRequestError, match=r"\[batch, 32, h, w\]"):
        decoder(torch.ones(1, 16, 4, 4))
    with pytest.raises(InvalidRequestError, match="at least 2 positions"):
        decoder(torch.ones(1, 32, 1, 1))
    with pytest.raises(InvalidRequestError, match="float64"):
        decoder(torch.ones(1, 32, 4, 4, dtype=torch.float64))
