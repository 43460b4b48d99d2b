"""``DiffusionHead`` against a functional float64 re-derivation, its key layout against the release's, and the
time embedding against its formula.

Every parameter is drawn at random (not the release's zero init, which would hide most of the network). The
re-derivation reads the state dict and spells out each step with ``F.linear`` and explicit LayerNorm, SiLU,
softmax and sigmoid formulas, following spec §1 "Diffusion head" and the release's TransEncoder / MlpEncoder.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bitdance_rt.reference.diffusion_head import DiffusionHead, DiffusionHeadConfig, timestep_frequencies


pytestmark = pytest.mark.usefixtures("single_thread")


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


T2I_SWIGLU = DiffusionHeadConfig(token_channels=8, cond_channels=48, width=256, depth=4, num_adaln=2,
                                 block_kind="trans", attn_head_dim=128, use_swiglu=True, sigmoid_output=True)
T2I_PLAIN_MLP = DiffusionHeadConfig(token_channels=8, cond_channels=48, width=256, depth=2, num_adaln=2,
                                    block_kind="trans", attn_head_dim=128, use_swiglu=False, sigmoid_output=True)
C2I_PATCH = DiffusionHeadConfig(token_channels=8, cond_channels=40, width=128, depth=4, num_adaln=2,
                                block_kind="trans", attn_head_dim=64)
C2I_SINGLE = DiffusionHeadConfig(token_channels=8, cond_channels=40, width=96, depth=6, num_adaln=2,
                                 block_kind="res")

# (config, tokens per patch)
HEADS = {
    "t2i_swiglu": (T2I_SWIGLU, 4),
    "t2i_plain_mlp": (T2I_PLAIN_MLP, 4),
    "c2i_patch16": (C2I_PATCH, 16),
    "c2i_single": (C2I_SINGLE, 1),
}


def meta_head(cfg: DiffusionHeadConfig) -> DiffusionHead:
    with torch.device("meta"):
        return DiffusionHead(cfg)


def random_head(cfg: DiffusionHeadConfig, seed: int) -> DiffusionHead:
    """A head with every parameter random: weights ~ N(0, 1/fan_in), biases ~ N(0, 0.1²), LayerNorm affine
    around (1, 0), adaLN weights halved so (1 + scale) and the gates stay O(1). Built on the meta device first so
    that no default initialisation touches the global generator."""
    head = meta_head(cfg).to_empty(device="cpu")
    g = generator(seed)
    with torch.no_grad():
        for name, p in head.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name:
                p.copy_(1.0 + 0.2 * noise if name.endswith("weight") else 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                gain = 0.5 if "ada_ln" in name else 1.0
                p.copy_(gain * noise / p.shape[1] ** 0.5)
    return head.eval()


def random_inputs(cfg: DiffusionHeadConfig, patch: int, rows: int, seed: int):
    g = generator(seed)
    x = torch.randn(rows, patch, cfg.token_channels, generator=g)
    t = torch.rand(rows, generator=g) * 0.95
    t[0], t[-1] = 0.0, 0.95   # the sampler's first and last times
    c = torch.randn(rows, patch, cfg.cond_channels, generator=g)
    return x, t, c


# ---------------------------------------------------------------- the re-derivation

def silu(z: torch.Tensor) -> torch.Tensor:
    return z / (1.0 + torch.exp(-z))


def layer_norm(h: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
               eps: float = 1e-6) -> torch.Tensor:
    mean = h.mean(dim=-1, keepdim=True)
    var = ((h - mean) ** 2).mean(dim=-1, keepdim=True)
    out = (h - mean) / torch.sqrt(var + eps)
    return out if weight is None else out * weight + bias


def softmax(s: torch.Tensor) -> torch.Tensor:
    e = torch.exp(s - s.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def time_features_f64(t: torch.Tensor) -> torch.Tensor:
    """[cos(1000·t·ω_k), sin(1000·t·ω_k)] with ω_k = 10000^(−k/128), k = 0..127, in float64."""
    k = torch.arange(128, dtype=torch.float64)
    args = 1000.0 * t.to(torch.float64)[:, None] * 10000.0 ** (-k / 128)[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def derived_forward(sd: dict[str, torch.Tensor], cfg: DiffusionHeadConfig, x: torch.Tensor, t: torch.Tensor,
                    c: torch.Tensor, time_features: torch.Tensor | None = None,
                    adaln_for_block=None) -> torch.Tensor:
    """The head, step by step in float64. ``adaln_for_block(i)`` picks block i's adaLN linear (default: the
    release's ``i // max(1, depth // n_adaln)``)."""
    sd = {k: v.to(torch.float64) for k, v in sd.items()}
    lin = lambda name, h: F.linear(h, sd[name + ".weight"], sd[name + ".bias"])  # noqa: E731
    x, c = x.to(torch.float64), c.to(torch.float64)
    d = cfg.width
    if time_features is None:
        time_features = time_features_f64(t)
    if adaln_for_block is None:
        adaln_for_block = lambda i: i // max(1, cfg.depth // cfg.num_adaln)  # noqa: E731

    t_emb = lin("time_embed.mlp.2", silu(lin("time_embed.mlp.0", time_features.to(torch.float64))))
    y = silu(t_emb[:, None, :] + lin("cond_embed", c))
    h = lin("input_proj", x)
    for i in range(cfg.depth):
        p = f"res_blocks.{i}."
        mod = lin(f"ada_ln_blocks.{adaln_for_block(i)}", y)
        if cfg.block_kind == "res":
            scale, shift, gate = (mod[..., j * d:(j + 1) * d] for j in range(3))
            a = layer_norm(h, sd[p + "norm.weight"], sd[p + "norm.bias"]) * (1 + scale) + shift
            u = lin(p + "w1", a)
            hidden = u.shape[-1] // 2
            h = h + lin(p + "w2", silu(u[..., :hidden]) * u[..., hidden:]) * gate
            continue
        scale1, shift1, gate1, scale2, shift2, gate2 = (mod[..., j * d:(j + 1) * d] for j in range(6))
        a = layer_norm(h, sd[p + "norm1.weight"], sd[p + "norm1.bias"]) * (1 + scale1) + shift1
        qkv = lin(p + "attn.wqkv", a)
        q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
        hd = cfg.attn_head_dim
        heads = []
        for j in range(d // hd):
            cols = slice(j * hd, (j + 1) * hd)
            weights = softmax(q[..., cols] @ k[..., cols].transpose(-1, -2) / math.sqrt(hd))
            heads.append(weights @ v[..., cols])
        h = h + lin(p + "attn.wo", torch.cat(heads, dim=-1)) * gate1
        a = layer_norm(h, sd[p + "norm2.weight"], sd[p + "norm2.bias"]) * (1 + scale2) + shift2
        if cfg.use_swiglu:
            u = lin(p + "w1", a)
            hidden = u.shape[-1] // 2
            m = lin(p + "w2", silu(u[..., :hidden]) * u[..., hidden:])
        else:
            m = lin(p + "mlp.2", silu(lin(p + "mlp.0", a)))
        h = h + m * gate2
    fin = lin("final_layer.ada_ln_modulation", y)
    out = lin("final_layer.linear", layer_norm(h) * (1 + fin[..., :d]) + fin[..., d:])
    return 2.0 / (1.0 + torch.exp(-out)) - 1.0 if cfg.sigmoid_output else out


# Tolerances, relative to the largest output magnitude (outputs are O(1)):
# - float64 module vs float64 derivation (same float32 time features): pure float64 rounding, measured < 2e-15;
#   1e-12 still catches a LayerNorm eps of 1e-5 instead of 1e-6 (measured ~1e-5 relative change).
# - float32 module vs float64 derivation (time features in float64 too): float32 rounding of 1000·t·ω, up to
#   ~1e3 radians, puts up to ~7e-5 into the time features; measured max 3.3e-6 relative, bound 5e-5.
F64_RTOL = 1e-12
F32_RTOL = 5e-5


def max_rel_err(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.to(torch.float64) - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize("name", list(HEADS))
def test_head_float64_matches_derivation(name):
    cfg, patch = HEADS[name]
    head = random_head(cfg, seed=1).double()
    x, t, c = random_inputs(cfg, patch, rows=5, seed=2)
    got = head(x.double(), t, c.double())
    assert got.dtype == torch.float64 and got.shape == (5, patch, cfg.token_channels)
    expected = derived_forward(head.state_dict(), cfg, x, t, c, time_features=timestep_frequencies(t))
    assert max_rel_err(got, expected) < F64_RTOL


@pytest.mark.parametrize("name", list(HEADS))
def test_head_float32_matches_derivation(name):
    cfg, patch = HEADS[name]
    head = random_head(cfg, seed=3)
    x, t, c = random_inputs(cfg, patch, rows=5, seed=4)
    with torch.no_grad():
        got = head(x, t, c)
    assert got.dtype == torch.float32
    expected = derived_forward(head.state_dict(), cfg, x, t, c)
    assert max_rel_err(got, expected) < F32_RTOL
    if cfg.sigmoid_output:
        assert got.abs().max() < 1.0


SIX_OVER_TWO = [0, 0, 0, 1, 1, 1]
TWELVE_OVER_THREE = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]


@pytest.mark.parametrize("kind,num_adaln,owners", [("res", 2, SIX_OVER_TWO), ("res", 3, TWELVE_OVER_THREE),
                                                   ("trans", 2, SIX_OVER_TWO), ("trans", 3, TWELVE_OVER_THREE)])
def test_adaln_sharing_rule(kind, num_adaln, owners):
    """Block i uses adaLN linear i // (depth // n_adaln) (``owners[i]``, written out); a different assignment
    gives a different output, so the comparison is sensitive to it."""
    depth = len(owners)
    every = depth // num_adaln
    cfg = DiffusionHeadConfig(token_channels=8, cond_channels=24, width=64, depth=depth, num_adaln=num_adaln,
                              block_kind=kind, attn_head_dim=32)
    assert cfg.adaln_every == every
    patch = 4 if kind == "trans" else 1
    head = random_head(cfg, seed=5).double()
    x, t, c = random_inputs(cfg, patch, rows=3, seed=6)
    got = head(x.double(), t, c.double())
    sd, feats = head.state_dict(), timestep_frequencies(t)
    expected = derived_forward(sd, cfg, x, t, c, time_features=feats,
                               adaln_for_block=lambda i: owners[i])
    assert max_rel_err(got, expected) < F64_RTOL
    interleaved = derived_forward(sd, cfg, x, t, c, time_features=feats, adaln_for_block=lambda i: i % num_adaln)
    assert max_rel_err(got, interleaved) > 1e-3


def test_adaln_every_is_at_least_one():
    cfg = DiffusionHeadConfig(token_channels=8, cond_channels=8, width=64, depth=2, num_adaln=3, block_kind="res")
    assert cfg.adaln_every == 1


def test_time_embedding_formula():
    """[cos, sin] of 1000·t·10000^(−k/128), k < 128, float32. The float32 argument carries up to ~3 roundings
    of 2^−24 relative, so the bound is 2e-6 + 4·2^−24·|1000·t·ω_k| per entry."""
    t = torch.cat([torch.tensor([0.0, 0.95, 0.5]), torch.rand(13, generator=generator(7)) * 0.95])
    got = timestep_frequencies(t)
    assert got.dtype == torch.float32 and got.shape == (16, 256)
    expected = time_features_f64(t)
    k = torch.arange(128, dtype=torch.float64)
    args = (1000.0 * t.to(torch.float64)[:, None] * 10000.0 ** (-k / 128)[None]).abs()
    bound = 2e-6 + 4 * 2.0 ** -24 * torch.cat([args, args], dim=-1)
    assert ((got.to(torch.float64) - expected).abs() <= bound).all()
    assert torch.equal(got[0, :128], torch.ones(128)) and torch.equal(got[0, 128:], torch.zeros(128))
    # a float64 t is rounded to float32 first, as the release does
    assert torch.equal(timestep_frequencies(t.double()), got)


@pytest.mark.parametrize("name", list(HEADS))
def test_expected_shapes_equal_state_dict(name):
    cfg, _ = HEADS[name]
    sd = meta_head(cfg).state_dict()
    assert cfg.expected_shapes() == {k: tuple(v.shape) for k, v in sd.items()}


# The release's keys (under `net.`) for three small heads, written out by hand from its TransEncoder /
# MlpEncoder: token_channels 8, cond_channels 40, width 128 (MLP hidden 192), depth 2.
COMMON_KEYS = {
    "time_embed.mlp.0.weight": (128, 256), "time_embed.mlp.0.bias": (128,),
    "time_embed.mlp.2.weight": (128, 128), "time_embed.mlp.2.bias": (128,),
    "cond_embed.weight": (128, 40), "cond_embed.bias": (128,),
    "input_proj.weight": (128, 8), "input_proj.bias": (128,),
    "final_layer.ada_ln_modulation.weight": (256, 128), "final_layer.ada_ln_modulation.bias": (256,),
    "final_layer.linear.weight": (8, 128), "final_layer.linear.bias": (8,),
}
TRANS_SWIGLU_KEYS = {
    **COMMON_KEYS,
    "ada_ln_blocks.0.weight": (768, 128), "ada_ln_blocks.0.bias": (768,),
    "res_blocks.0.norm1.weight": (128,), "res_blocks.0.norm1.bias": (128,),
    "res_blocks.0.attn.wqkv.weight": (384, 128), "res_blocks.0.attn.wqkv.bias": (384,),
    "res_blocks.0.attn.wo.weight": (128, 128), "res_blocks.0.attn.wo.bias": (128,),
    "res_blocks.0.norm2.weight": (128,), "res_blocks.0.norm2.bias": (128,),
    "res_blocks.0.w1.weight": (384, 128), "res_blocks.0.w1.bias": (384,),
    "res_blocks.0.w2.weight": (128, 192), "res_blocks.0.w2.bias": (128,),
    "res_blocks.1.norm1.weight": (128,), "res_blocks.1.norm1.bias": (128,),
    "res_blocks.1.attn.wqkv.weight": (384, 128), "res_blocks.1.attn.wqkv.bias": (384,),
    "res_blocks.1.attn.wo.weight": (128, 128), "res_blocks.1.attn.wo.bias": (128,),
    "res_blocks.1.norm2.weight": (128,), "res_blocks.1.norm2.bias": (128,),
    "res_blocks.1.w1.weight": (384, 128), "res_blocks.1.w1.bias": (384,),
    "res_blocks.1.w2.weight": (128, 192), "res_blocks.1.w2.bias": (128,),
}
TRANS_PLAIN_MLP_KEYS = {
    **COMMON_KEYS,
    "ada_ln_blocks.0.weight": (768, 128), "ada_ln_blocks.0.bias": (768,),
    "ada_ln_blocks.1.weight": (768, 128), "ada_ln_blocks.1.bias": (768,),
    "res_blocks.0.norm1.weight": (128,), "res_blocks.0.norm1.bias": (128,),
    "res_blocks.0.attn.wqkv.weight": (384, 128), "res_blocks.0.attn.wqkv.bias": (384,),
    "res_blocks.0.attn.wo.weight": (128, 128), "res_blocks.0.attn.wo.bias": (128,),
    "res_blocks.0.norm2.weight": (128,), "res_blocks.0.norm2.bias": (128,),
    "res_blocks.0.mlp.0.weight": (192, 128), "res_blocks.0.mlp.0.bias": (192,),
    "res_blocks.0.mlp.2.weight": (128, 192), "res_blocks.0.mlp.2.bias": (128,),
    "res_blocks.1.norm1.weight": (128,), "res_blocks.1.norm1.bias": (128,),
    "res_blocks.1.attn.wqkv.weight": (384, 128), "res_blocks.1.attn.wqkv.bias": (384,),
    "res_blocks.1.attn.wo.weight": (128, 128), "res_blocks.1.attn.wo.bias": (128,),
    "res_blocks.1.norm2.weight": (128,), "res_blocks.1.norm2.bias": (128,),
    "res_blocks.1.mlp.0.weight": (192, 128), "res_blocks.1.mlp.0.bias": (192,),
    "res_blocks.1.mlp.2.weight": (128, 192), "res_blocks.1.mlp.2.bias": (128,),
}
RES_KEYS = {
    **COMMON_KEYS,
    "ada_ln_blocks.0.weight": (384, 128), "ada_ln_blocks.0.bias": (384,),
    "ada_ln_blocks.1.weight": (384, 128), "ada_ln_blocks.1.bias": (384,),
    "res_blocks.0.norm.weight": (128,), "res_blocks.0.norm.bias": (128,),
    "res_blocks.0.w1.weight": (384, 128), "res_blocks.0.w1.bias": (384,),
    "res_blocks.0.w2.weight": (128, 192), "res_blocks.0.w2.bias": (128,),
    "res_blocks.1.norm.weight": (128,), "res_blocks.1.norm.bias": (128,),
    "res_blocks.1.w1.weight": (384, 128), "res_blocks.1.w1.bias": (384,),
    "res_blocks.1.w2.weight": (128, 192), "res_blocks.1.w2.bias": (128,),
}


@pytest.mark.parametrize("kind,num_adaln,use_swiglu,keys", [
    ("trans", 1, True, TRANS_SWIGLU_KEYS),
    ("trans", 2, False, TRANS_PLAIN_MLP_KEYS),
    ("res", 2, True, RES_KEYS),
])
def test_keys_equal_release_keys(kind, num_adaln, use_swiglu, keys):
    cfg = DiffusionHeadConfig(token_channels=8, cond_channels=40, width=128, depth=2, num_adaln=num_adaln,
                              block_kind=kind, attn_head_dim=64, use_swiglu=use_swiglu)
    sd = meta_head(cfg).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == keys
    assert cfg.expected_shapes() == keys


def test_unknown_block_kind_is_rejected():
    with pytest.raises(ValueError, match="block_kind"):
        meta_head(DiffusionHeadConfig(token_channels=8, cond_channels=8, width=64, depth=2, num_adaln=1,
                                      block_kind="conv"))
