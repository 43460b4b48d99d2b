"""The diffusion head ("DiffHead"): x-prediction network that denoises the P tokens of one patch.

``DiffusionHead(config)(x, t, c)`` takes noisy tokens ``x [N, P, C]``, times ``t [N]`` and AR hidden states
``c [N, P, C_cond]`` and returns the predicted clean tokens ``[N, P, C]``. Two block kinds:

- ``"trans"``: TransBlocks (P > 1 heads, and every T2I head): adaLN-modulated self-attention over the P tokens of
  one patch, then an MLP; adaLN linears give 6·D.
- ``"res"``: ResBlocks (the class-conditional P = 1 heads): adaLN-modulated SwiGLU per token; adaLN linears give 3·D.

State-dict keys are the release's ``TransEncoder`` / ``MlpEncoder`` keys (without the ``net.`` prefix).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .head_ops import gated_residual_ref, layernorm_modulate_ref, patch_attention_ref, swiglu_ref

FREQ_EMBED_DIM = 256
LN_EPS = 1e-6


@dataclass(frozen=True)
class DiffusionHeadConfig:
    token_channels: int        # C: channels of one binary token
    cond_channels: int         # C_cond: channels of the AR hidden state
    width: int                 # D
    depth: int                 # number of blocks
    num_adaln: int             # number of adaLN linears shared by consecutive blocks
    block_kind: str            # "trans" or "res"
    attn_head_dim: int = 128   # channels per attention head (TransBlocks only)
    use_swiglu: bool = True    # TransBlock MLP kind
    sigmoid_output: bool = False  # T2I heads map the output through 2*sigmoid-1
    time_shift: float = 1.0

    @property
    def adaln_every(self) -> int:
        """Block i uses adaLN linear ``i // adaln_every``."""
        return max(1, self.depth // self.num_adaln)

    @property
    def mlp_hidden(self) -> int:
        return int(self.width * 1.5)

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        d, h = self.width, self.mlp_hidden
        shapes = {
            "time_embed.mlp.0.weight": (d, FREQ_EMBED_DIM), "time_embed.mlp.0.bias": (d,),
            "time_embed.mlp.2.weight": (d, d), "time_embed.mlp.2.bias": (d,),
            "cond_embed.weight": (d, self.cond_channels), "cond_embed.bias": (d,),
            "input_proj.weight": (d, self.token_channels), "input_proj.bias": (d,),
            "final_layer.ada_ln_modulation.weight": (2 * d, d), "final_layer.ada_ln_modulation.bias": (2 * d,),
            "final_layer.linear.weight": (self.token_channels, d), "final_layer.linear.bias": (self.token_channels,),
        }
        mult = 6 if self.block_kind == "trans" else 3
        for k in range(self.num_adaln):
            shapes[f"ada_ln_blocks.{k}.weight"] = (mult * d, d)
            shapes[f"ada_ln_blocks.{k}.bias"] = (mult * d,)
        for i in range(self.depth):
            p = f"res_blocks.{i}."
            if self.block_kind == "res":
                shapes.update({p + "norm.weight": (d,), p + "norm.bias": (d,)})
                shapes.update(_linear(p + "w1", 2 * h, d))
                shapes.update(_linear(p + "w2", d, h))
                continue
            for n in ("norm1", "norm2"):
                shapes.update({p + n + ".weight": (d,), p + n + ".bias": (d,)})
            shapes.update(_linear(p + "attn.wqkv", 3 * d, d))
            shapes.update(_linear(p + "attn.wo", d, d))
            if self.use_swiglu:
                shapes.update(_linear(p + "w1", 2 * h, d))
                shapes.update(_linear(p + "w2", d, h))
            else:
                shapes.update(_linear(p + "mlp.0", h, d))
                shapes.update(_linear(p + "mlp.2", d, h))
        return shapes


def _linear(name: str, out_f: int, in_f: int) -> dict[str, tuple[int, ...]]:
    return {name + ".weight": (out_f, in_f), name + ".bias": (out_f,)}


def timestep_frequencies(t: torch.Tensor, dim: int = FREQ_EMBED_DIM, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of ``1000·t``: ``[cos(args), sin(args)]``, float32, shape ``[N, dim]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (1000.0 * t.float())[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def swiglu(w1: nn.Linear, w2: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return w2(swiglu_ref(w1(x)))


def norm_modulate(norm: nn.LayerNorm, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``norm(x)·(1+scale)+shift`` with the LayerNorm module's affine parameters and eps."""
    return layernorm_modulate_ref(x, scale, shift, norm.weight, norm.bias, norm.eps)


class TimestepEmbedder(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(FREQ_EMBED_DIM, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freqs = timestep_frequencies(t)
        return self.mlp(freqs.to(self.mlp[0].weight.dtype))


class PatchSelfAttention(nn.Module):
    """Unmasked multi-head self-attention over the P tokens of one patch, no positional encoding."""

    def __init__(self, width: int, head_dim: int):
        super().__init__()
        self.num_heads = width // head_dim
        self.head_dim = head_dim
        self.wqkv = nn.Linear(width, 3 * width)
        self.wo = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wo(patch_attention_ref(self.wqkv(x), self.head_dim))


class TransBlock(nn.Module):
    def __init__(self, cfg: DiffusionHeadConfig):
        super().__init__()
        d, h = cfg.width, cfg.mlp_hidden
        self.norm1 = nn.LayerNorm(d, eps=LN_EPS)
        self.attn = PatchSelfAttention(d, cfg.attn_head_dim)
        self.norm2 = nn.LayerNorm(d, eps=LN_EPS)
        self.use_swiglu = cfg.use_swiglu
        if cfg.use_swiglu:
            self.w1 = nn.Linear(d, 2 * h)
            self.w2 = nn.Linear(h, d)
        else:
            self.mlp = nn.Sequential(nn.Linear(d, h), nn.SiLU(), nn.Linear(h, d))

    def forward(self, x: torch.Tensor, mod: tuple[torch.Tensor, ...]) -> torch.Tensor:
        scale1, shift1, gate1, scale2, shift2, gate2 = mod
        x = gated_residual_ref(x, self.attn(norm_modulate(self.norm1, x, scale1, shift1)), gate1)
        h = norm_modulate(self.norm2, x, scale2, shift2)
        h = swiglu(self.w1, self.w2, h) if self.use_swiglu else self.mlp(h)
        return gated_residual_ref(x, h, gate2)


class ResBlock(nn.Module):
    def __init__(self, cfg: DiffusionHeadConfig):
        super().__init__()
        d, h = cfg.width, cfg.mlp_hidden
        self.norm = nn.LayerNorm(d, eps=LN_EPS)
        self.w1 = nn.Linear(d, 2 * h)
        self.w2 = nn.Linear(h, d)

    def forward(self, x: torch.Tensor, mod: tuple[torch.Tensor, ...]) -> torch.Tensor:
        scale, shift, gate = mod
        return gated_residual_ref(x, swiglu(self.w1, self.w2, norm_modulate(self.norm, x, scale, shift)), gate)


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_channels: int):
        super().__init__()
        self.ada_ln_modulation = nn.Linear(width, 2 * width)
        self.linear = nn.Linear(width, out_channels)
        self.width = width

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_ln_modulation(y).chunk(2, dim=-1)
        return self.linear(layernorm_modulate_ref(x, scale, shift, None, None, LN_EPS))


class DiffusionHead(nn.Module):
    def __init__(self, cfg: DiffusionHeadConfig):
        super().__init__()
        if cfg.block_kind not in ("trans", "res"):
            raise ValueError(f"block_kind must be 'trans' or 'res', got {cfg.block_kind!r}")
        self.cfg = cfg
        d = cfg.width
        self.time_embed = TimestepEmbedder(d)
        self.cond_embed = nn.Linear(cfg.cond_channels, d)
        self.input_proj = nn.Linear(cfg.token_channels, d)
        block = TransBlock if cfg.block_kind == "trans" else ResBlock
        self.res_blocks = nn.ModuleList(block(cfg) for _ in range(cfg.depth))
        mult = 6 if cfg.block_kind == "trans" else 3
        self.ada_ln_blocks = nn.ModuleList(nn.Linear(d, mult * d) for _ in range(cfg.num_adaln))
        self.final_layer = FinalLayer(d, cfg.token_channels)

    def condition(self, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``y = silu(time_embed(t) + cond_embed(c))``: t ``[N]``, c ``[N, P, C_cond]`` -> ``[N, P, D]``."""
        return F.silu(self.time_embed(t).unsqueeze(1) + self.cond_embed(c))

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x ``[N, P, C]`` noisy tokens, t ``[N]`` times in [0, 1), c ``[N, P, C_cond]`` -> clean-token prediction."""
        y = self.condition(t, c)
        x = self.input_proj(x)
        every = self.cfg.adaln_every
        mod: tuple[torch.Tensor, ...] = ()
        for i, blk in enumerate(self.res_blocks):
            if i % every == 0:
                mod = self.ada_ln_blocks[i // every](y).chunk(6 if self.cfg.block_kind == "trans" else 3, dim=-1)
            x = blk(x, mod)
        out = self.final_layer(x, y)
        return 2 * torch.sigmoid(out) - 1 if self.cfg.sigmoid_output else out
