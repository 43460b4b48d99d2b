"""The class-conditional transformer against a dense float64 re-derivation written here.

The re-derivation runs the whole sequence at once with the explicit block mask (causal over 63 positions, then
blocks of P), interleaved 2-D RoPE from its formula, and every layer spelled out; the module runs it the way
generation does: the prefix, then one block of P per step through the KV cache. Both run in float64 except the
RoPE angle tables, which the module builds in float32 as the release does: tolerance 1e-6 relative (a wrong mask,
position or head split gives errors of order 1e-2 to 1e-1).
"""

import math

import pytest
import torch

from bitdance_rt.reference.c2i_backbone import C2IBackbone, C2IConfig, ffn_hidden
from bitdance_rt.reference.masks import C2I_CAUSAL_LEN, block_causal_mask


def random_backbone(cfg: C2IConfig, seed: int) -> C2IBackbone:
    gen = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        bb = C2IBackbone(cfg)
    state = {}
    for k, shape in cfg.expected_shapes().items():
        t = torch.randn(shape, generator=gen, dtype=torch.float64)
        if k.endswith("norm.weight"):
            t = 1 + 0.1 * t
        elif len(shape) == 2 and "embedding" not in k and "pos_for_diff" not in k:
            t = t / math.sqrt(shape[1])
        state[k] = t
    bb.load_state_dict(state, assign=True)
    return bb


def rms(x, w):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6) * w


def rope_angles(cfg: C2IConfig) -> torch.Tensor:
    """Angles [positions, head_dim/2] in generation order, from the spec's formula."""
    quarter = cfg.head_dim // 4
    freqs = [1.0 / 10000 ** (2 * j / (cfg.head_dim // 2)) for j in range(quarter)]
    side = cfg.patch_side
    rows = [[0.0] * (2 * quarter) for _ in range(cfg.num_prefix)]
    for pr in range(cfg.grid // side):
        for pc in range(cfg.grid // side):
            for i in range(side):
                for j in range(side):
                    r, c = pr * side + i, pc * side + j
                    rows.append([(c + 0.5 + 1) * f for f in freqs] + [(r + 0.5 + 1) * f for f in freqs])
    return torch.tensor(rows, dtype=torch.float64)


def rotate(x, ang):  # x [T, H, D], pairs (2i, 2i+1)
    c, s = torch.cos(ang)[:, None, :], torch.sin(ang)[:, None, :]
    e, o = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = e * c - o * s
    out[..., 1::2] = o * c + e * s
    return out


def dense_forward(bb: C2IBackbone, x: torch.Tensor) -> torch.Tensor:
    """x [T, dim] raw inputs of the whole sequence -> normed hidden states [T, dim]."""
    cfg, sd = bb.cfg, {k: v for k, v in bb.state_dict().items()}
    t = x.shape[0]
    allowed = block_causal_mask(t, C2I_CAUSAL_LEN, cfg.parallel)
    ang = rope_angles(cfg)[:t]
    h = rms(x, sd["emb_norm.weight"])
    hd, nh = cfg.head_dim, cfg.num_heads
    for i in range(cfg.num_layers):
        p = f"layers.{i}."
        a = rms(h, sd[p + "attention_norm.weight"])
        q, k, v = (a @ sd[p + "attention.wqkv.weight"].T).split(cfg.dim, dim=-1)
        q, k, v = (z.reshape(t, nh, hd) for z in (q, k, v))
        q, k = rotate(q, ang), rotate(k, ang)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd)
        scores = scores.masked_fill(~allowed, float("-inf"))
        att = torch.einsum("hqk,khd->qhd", torch.softmax(scores, -1), v).reshape(t, cfg.dim)
        h = h + att @ sd[p + "attention.wo.weight"].T
        f = rms(h, sd[p + "ffn_norm.weight"]) @ sd[p + "feed_forward.w1.weight"].T
        g, u = f.split(ffn_hidden(cfg.dim), dim=-1)
        h = h + (torch.nn.functional.silu(g) * u) @ sd[p + "feed_forward.w2.weight"].T
    return rms(h, sd["norm.weight"])


@pytest.mark.parametrize("parallel", [1, 4, 16])
@torch.no_grad()
def test_cached_block_steps_equal_dense_sequence(parallel):
    cfg = C2IConfig(dim=128, num_layers=2, num_heads=2, token_channels=32, parallel=parallel, grid=16)
    bb = random_backbone(cfg, seed=parallel)
    gen = torch.Generator().manual_seed(100 + parallel)
    labels = torch.tensor([3, 1000])
    steps = 3
    tokens = torch.randint(0, 2, (2, steps * parallel, 32), generator=gen).double() * 2 - 1
    prefix = bb.class_tokens(labels)
    # dense: the whole sequence at once
    seq = torch.cat([prefix, bb.embed_tokens(tokens)], dim=1)
    want = torch.stack([dense_forward(bb, s) for s in seq])
    # cached: prefix, then one block per step
    cache = bb.new_cache(2)
    got = [bb(prefix, block_causal_mask(cfg.num_prefix, C2I_CAUSAL_LEN, parallel), cache)]
    for s in range(steps):
        block = tokens[:, s * parallel:(s + 1) * parallel]
        mask = torch.ones(parallel, cache.length + parallel, dtype=torch.bool)
        got.append(bb(bb.embed_tokens(block), mask, cache))
    got = torch.cat(got, dim=1)
    assert torch.isfinite(got).all()
    err = (got - want).norm() / want.norm()
    assert err < 1e-6, err


def test_class_tokens_and_head_condition_layout():
    cfg = C2IConfig(dim=64, num_layers=1, num_heads=1, token_channels=32, parallel=4, grid=16)
    bb = random_backbone(cfg, seed=0)
    prefix = bb.class_tokens(torch.tensor([7]))
    assert prefix.shape == (1, 64 + 3, 64)
    assert torch.equal(prefix[0, :64].reshape(-1), bb.cls_embedding.weight[7])
    assert torch.equal(prefix[0, 64:], bb.query_token[0])
    hidden = torch.randn(1, 4, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    cond = bb.head_condition(hidden, step=5)
    assert torch.equal(cond, hidden + bb.pos_for_diff.weight[20:24])


def test_ffn_hidden_rounds_up_to_256():
    assert [ffn_hidden(d) for d in (768, 1024, 1280, 64)] == [2048, 2816, 3584, 256]
