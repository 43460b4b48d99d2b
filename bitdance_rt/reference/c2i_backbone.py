"""The class-conditional BitDance transformer (ImageNet B/L/H, P = 1, 4 or 16), without its head.

Inputs are embedded by :meth:`C2IBackbone.class_tokens` (64 class tokens, then P−1 learned query tokens) or
:meth:`C2IBackbone.embed_tokens` (binary tokens through the SwiGLU connector ``proj_in``). :meth:`forward` runs
``emb_norm``, the pre-RMSNorm layers (fused ``wqkv``, interleaved 2-D RoPE, SwiGLU FFN) and the final norm over
new positions ``[cache.length, cache.length + T)``, with a dense bool mask of those rows.
:meth:`head_condition` adds ``pos_for_diff`` for the head.

State-dict keys are the release's ``BitDance`` keys minus ``head.`` and ``vae.`` (loaded elsewhere).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .embedding_table import embedding_table
from .kv_cache import KVCache
from .rope import apply_interleaved, c2i_rope_tables

NORM_EPS = 1e-6
NUM_CLASS_TOKENS = 64  # the release's count (a training flag; a checkpoint's own count is read from its shapes)
NUM_CLASSES = 1000  # ImageNet; the null class of the unconditional half is the last id (1000)


def ffn_hidden(dim: int) -> int:
    """SwiGLU width of the class-conditional FFN: ``int(8·dim/3)`` rounded up to a multiple of 256."""
    hidden = int(2 * (4.0 * dim) / 3)
    return hidden if hidden % 256 == 0 else hidden + 256 - hidden % 256


@dataclass(frozen=True)
class C2IConfig:
    dim: int
    num_layers: int
    num_heads: int
    token_channels: int      # C (32)
    parallel: int            # P
    grid: int = 16           # token grid side (256 / 16)
    class_tokens: int = NUM_CLASS_TOKENS  # class embedding viewed as this many tokens
    num_classes: int = NUM_CLASSES        # real classes; id ``num_classes`` is the null class

    @property
    def null_class(self) -> int:
        return self.num_classes

    @property
    def causal_len(self) -> int:
        """The causal part of the prefix: every class token but the last (the first block is the last class token
        and the P−1 query tokens)."""
        return self.class_tokens - 1

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def patch_side(self) -> int:
        return int(round(self.parallel ** 0.5))

    @property
    def num_prefix(self) -> int:
        """Class tokens plus query tokens: the positions before the first image token."""
        return self.class_tokens + self.parallel - 1

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        d, c, h, f = self.dim, self.token_channels, int(self.dim * 1.5), ffn_hidden(self.dim)
        shapes = {
            "cls_embedding.weight": (self.num_classes + 1, d * self.class_tokens),
            "proj_in.w1.weight": (2 * h, c), "proj_in.w1.bias": (2 * h,),
            "proj_in.w2.weight": (d, h), "proj_in.w2.bias": (d,),
            "emb_norm.weight": (d,), "norm.weight": (d,),
            "pos_for_diff.weight": (self.num_tokens, d),
        }
        if self.parallel > 1:
            shapes["query_token"] = (1, self.parallel - 1, d)
        for i in range(self.num_layers):
            p = f"layers.{i}."
            shapes.update({
                p + "attention.wqkv.weight": (3 * d, d), p + "attention.wo.weight": (d, d),
                p + "feed_forward.w1.weight": (2 * f, d), p + "feed_forward.w2.weight": (d, f),
                p + "attention_norm.weight": (d,), p + "ffn_norm.weight": (d,),
            })
        return shapes


def swiglu(w1: nn.Linear, w2: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    a, b = w1(x).chunk(2, dim=-1)
    return w2(F.silu(a) * b)


class SwiGLUConnector(nn.Module):
    """``proj_in``: binary tokens ``[.., C]`` -> embeddings ``[.., dim]`` (SwiGLU, width 1.5·dim, with biases)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        hidden = int(dim * 1.5)
        self.w1 = nn.Linear(in_dim, 2 * hidden)
        self.w2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return swiglu(self.w1, self.w2, x)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.wqkv = nn.Linear(dim, 3 * dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
                cache: KVCache, layer: int) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.num_heads, self.head_dim) for z in self.wqkv(x).chunk(3, dim=-1))
        q = apply_interleaved(q, cos, sin).transpose(1, 2)
        k = apply_interleaved(k, cos, sin).transpose(1, 2)
        keys, values = cache.write(layer, k, v.transpose(1, 2))
        scores = (q * self.head_dim ** -0.5) @ keys.transpose(-1, -2)
        scores = scores.masked_fill(~mask, float("-inf"))
        out = torch.softmax(scores, dim=-1) @ values
        return self.wo(out.transpose(1, 2).reshape(b, t, d))


class Layer(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.attention = Attention(dim, num_heads)
        hidden = ffn_hidden(dim)
        self.feed_forward = nn.Module()
        self.feed_forward.w1 = nn.Linear(dim, 2 * hidden, bias=False)
        self.feed_forward.w2 = nn.Linear(hidden, dim, bias=False)
        self.attention_norm = nn.RMSNorm(dim, eps=NORM_EPS)
        self.ffn_norm = nn.RMSNorm(dim, eps=NORM_EPS)

    def forward(self, x, cos, sin, mask, cache, layer):
        h = x + self.attention(self.attention_norm(x), cos, sin, mask, cache, layer)
        return h + swiglu(self.feed_forward.w1, self.feed_forward.w2, self.ffn_norm(h))


class C2IBackbone(nn.Module):
    def __init__(self, cfg: C2IConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.cls_embedding = embedding_table(cfg.num_classes + 1, d * cfg.class_tokens)
        if cfg.parallel > 1:
            self.query_token = nn.Parameter(torch.empty(1, cfg.parallel - 1, d))
        self.proj_in = SwiGLUConnector(cfg.token_channels, d)
        self.emb_norm = nn.RMSNorm(d, eps=NORM_EPS)
        self.layers = nn.ModuleList(Layer(d, cfg.num_heads) for _ in range(cfg.num_layers))
        self.norm = nn.RMSNorm(d, eps=NORM_EPS)
        self.pos_for_diff = embedding_table(cfg.num_tokens, d)
        self._rope: tuple[torch.Tensor, torch.Tensor] | None = None

    def rope_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 cos/sin ``[num_prefix + grid², head_dim/2]`` over generation positions (computed once)."""
        if self._rope is None or self._rope[0].device != self.norm.weight.device:
            cos, sin = c2i_rope_tables(self.cfg.grid, self.cfg.head_dim, self.cfg.num_prefix, self.cfg.patch_side)
            self._rope = (cos.to(self.norm.weight.device), sin.to(self.norm.weight.device))
        return self._rope

    def class_tokens(self, labels: torch.Tensor) -> torch.Tensor:
        """``[B]`` labels (``0..num_classes − 1``; ``num_classes`` = null) -> ``[B, class_tokens + P − 1, dim]``
        prefix embeddings."""
        b = labels.shape[0]
        x = self.cls_embedding(labels).view(b, self.cfg.class_tokens, self.cfg.dim)
        if self.cfg.parallel > 1:
            x = torch.cat([x, self.query_token.expand(b, -1, -1)], dim=1)
        return x

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Binary tokens ``[B, P, C]`` -> embeddings ``[B, P, dim]``."""
        return self.proj_in(tokens.to(self.proj_in.w1.weight.dtype))

    def new_cache(self, batch: int) -> KVCache:
        w = self.norm.weight
        return KVCache(self.cfg.num_layers, batch, self.cfg.num_heads, self.cfg.num_prefix + self.cfg.num_tokens,
                       self.cfg.head_dim, w.device, w.dtype)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """x ``[B, T, dim]`` new input embeddings; mask bool ``[T, cache.length + T]``. Returns ``[B, T, dim]``
        after the final norm."""
        start, t = cache.length, x.shape[1]
        cos, sin = (z[start:start + t] for z in self.rope_tables())
        x = self.emb_norm(x)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, cache, i)
        cache.advance(t)
        return self.norm(x)

    def head_condition(self, hidden: torch.Tensor, step: int) -> torch.Tensor:
        """Add ``pos_for_diff`` of AR step ``step``'s P positions to the last P hidden states."""
        p = self.cfg.parallel
        return hidden[:, -p:] + self.pos_for_diff.weight[step * p:(step + 1) * p]
