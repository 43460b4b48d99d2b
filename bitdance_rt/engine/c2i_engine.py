"""Class-conditional generation on the engine: static KV cache, Triton kernels in every layer, the fused head loop,
continuous batching of requests at different AR steps.

Rows: each image slot of a ``SlotBatch`` owns its label's row and (guided) a null-class row. Per layer:
``rmsnorm_residual`` (torch rounding, as ``nn.RMSNorm``) -> the fused ``wqkv`` GEMM -> ``rope_append_interleaved``
(2-D RoPE in generation order, K/V into the cache) -> ``block_attention_prefill`` (the 64 class tokens and P−1
queries: causal over 63, then one block) or ``block_attention_decode`` -> ``wo`` -> ``rmsnorm_residual`` -> ``w1``
-> ``swiglu`` -> ``w2``. The guidance schedule (one scale per slot, from its AR step) and the release's step-0
behaviour (an unguided sample over all 2B rows, each row keeping its own first patch: ``unguided_rows``, run
on a joining request's rows before it steps with the batch) are kept.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..ops import OpSet
from ..reference.c2i_backbone import NORM_EPS
from .engine_base import EngineBase
from .head_loop import FusedHead
from .slot_batch import SlotBatch
from .static_cache import StaticKVCache


class C2IEngine(EngineBase):
    def __init__(self, family, ops: OpSet):
        super().__init__(ops)
        self.family = family
        self.model = model = family.model
        bb, cfg = model.backbone, model.config
        self.cfg = cfg
        cos, sin = bb.rope_tables()
        self.cos, self.sin = cos.contiguous(), sin.contiguous()
        self.head = FusedHead(model.head, ops)
        self.head_dim, self.token_channels = cfg.head_dim, cfg.token_channels
        self.width, self.patch = cfg.dim, cfg.parallel
        self.cache_shape = (cfg.num_layers, cfg.num_heads, cfg.head_dim)
        self.num_heads, self.ffn_width = cfg.num_heads, bb.layers[0].feed_forward.w1.weight.shape[0]

    def _layers(self, x: torch.Tensor, cache: StaticKVCache, attend: Callable[[int, torch.Tensor], torch.Tensor]
                ) -> torch.Tensor:
        """``emb_norm``, every layer and the final norm over raw input embeddings ``x [B, T, dim]``."""
        cfg, bb = self.cfg, self.model.backbone
        b, t, dim = x.shape
        heads, d = cfg.num_heads, cfg.head_dim
        h, _ = self.ops.rmsnorm_residual(x.reshape(b * t, dim), None, bb.emb_norm.weight, NORM_EPS, style="torch")
        residual = None
        for i, layer in enumerate(bb.layers):
            y, residual = self.ops.rmsnorm_residual(h, residual, layer.attention_norm.weight, NORM_EPS, style="torch")
            qkv = F.linear(y, layer.attention.wqkv.weight).view(b, t, 3 * heads, d)
            q = self.ops.rope_append_interleaved(qkv[:, :, :heads], qkv[:, :, heads:2 * heads], qkv[:, :, 2 * heads:],
                                                 self.cos, self.sin, cache.keys[i], cache.values[i], cache.lengths)
            out = attend(i, q).transpose(1, 2).reshape(b * t, heads * d)
            h = F.linear(out, layer.attention.wo.weight)
            y, residual = self.ops.rmsnorm_residual(h, residual, layer.ffn_norm.weight, NORM_EPS, style="torch")
            ff = layer.feed_forward
            h = F.linear(self.ops.swiglu(F.linear(y, ff.w1.weight)), ff.w2.weight)
        y, _ = self.ops.rmsnorm_residual(h, residual, bb.norm.weight, NORM_EPS, style="torch")
        return y.view(b, t, dim)

    def prefill(self, labels: torch.Tensor, cache: StaticKVCache) -> torch.Tensor:
        """Class and query tokens of every row; returns their hidden states ``[B, 64 + P − 1, dim]``."""
        cfg = self.cfg
        scale = cfg.head_dim ** -0.5
        lengths = torch.full((labels.shape[0],), cfg.num_prefix, dtype=torch.int32, device=labels.device)
        causal = torch.full_like(lengths, cfg.causal_len)
        cache.lengths.zero_()

        def attend(i: int, q: torch.Tensor) -> torch.Tensor:
            return self.ops.block_attention_prefill(q, cache.keys[i], cache.values[i], lengths, causal, cfg.parallel,
                                                    scale)

        hidden = self._layers(self.model.backbone.class_tokens(labels), cache, attend)
        cache.lengths.copy_(lengths)
        return hidden

    # ------------------------------------------------------------------ continuous batching
    @property
    def hidden_dtype(self) -> torch.dtype:
        return self.model.backbone.norm.weight.dtype

    def block_positions(self, grid: tuple[int, int]) -> torch.Tensor:
        """``pos_for_diff`` of every AR step, ``[h·w / P, P, dim]`` float32."""
        p = self.cfg.parallel
        return self.model.backbone.pos_for_diff.weight.float().view(-1, p, self.cfg.dim)

    def join(self, batch: SlotBatch, first_slot: int, rows: list[int]) -> None:
        """A joining request's prefill, its rows only: class ids ``rows`` (``family.cache_rows``) into the cache rows of
        its slots ``first_slot ..``; the hidden states of their first block land in ``batch.hidden``."""
        span = batch.row_range(first_slot, len(rows) // batch.mult)
        if span.stop - span.start != len(rows):
            raise ValueError(f"C2IEngine.join: {len(rows)} rows do not fill whole slots of {batch.mult} rows")
        labels = torch.tensor(rows, device=batch.hidden.device)
        batch.hidden[span] = self.prefill(labels, batch.cache.rows(span.start, span.stop))[:, -self.cfg.parallel:]
        batch.live[span] = 1

    def unguided_rows(self, batch: SlotBatch, first_slot: int, count: int, block_pos: torch.Tensor,
                           noise: torch.Tensor) -> torch.Tensor:
        """The release's guided step 0 for ``count`` slots (one or more joining requests), eager: each of their
        ``2·count`` rows (conditional and null-class) sampled unguided on its own, with ``noise [N + 1, 2·count, P,
        C]`` in the sampler's row order (conditional rows of the slots, then their null-class rows). Returns the
        tokens ``[2·count, P, C]`` in cache-row order (``decode_rows`` feeds them back)."""
        span = batch.row_range(first_slot, count)
        p, c, w = self.cfg.parallel, self.token_channels, self.cfg.dim
        cond = (batch.hidden[span] + block_pos).view(count, 2, p, w).transpose(0, 1).reshape(2 * count, p, w)
        tokens = self.head.sample(cond, noise, 1.0, False, self.head.step_times(noise.shape[0] - 1))
        return tokens.view(2, count, p, c).transpose(0, 1).reshape(2 * count, p, c)

    def embed_feedback(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.model.backbone.embed_tokens(tokens)
