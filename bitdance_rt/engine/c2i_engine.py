"""Class-conditional generation on the engine: static KV cache, Triton kernels in every layer, the fused head loop.

Rows: the B labels, then (with guidance) B null-class rows, in one batch. Per layer: ``rmsnorm_residual`` (torch
rounding, as ``nn.RMSNorm``) -> the fused ``wqkv`` GEMM -> ``rope_append_interleaved`` (2-D RoPE in generation
order, K/V into the cache) -> ``block_attention_prefill`` (the 64 class tokens and P−1 queries: causal over 63,
then one block) or ``block_attention_decode`` -> ``wo`` -> ``rmsnorm_residual`` -> ``w1`` -> ``swiglu`` -> ``w2``.
The guidance schedule and the release's step-0 behaviour (an unguided sample over all 2B rows, each row keeping its
own first patch) are kept.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..kernels.block_attention import block_attention_prefill
from ..kernels.kv_append import rope_append_interleaved
from ..kernels.rmsnorm_residual import rmsnorm_residual
from ..kernels.swiglu import swiglu
from ..loading.c2i_checkpoint import C2IModel
from ..reference.c2i_backbone import NORM_EPS, NUM_CLASSES
from ..reference.masks import C2I_CAUSAL_LEN
from ..reference.sampler import linear_guidance
from .ar_step import AutoregressiveStep, StepBuffers
from .engine_base import EngineBase
from .head_loop import FusedHead
from .request_noise import draw_step_noise
from .static_cache import CachePool, StaticKVCache


class C2IEngine(EngineBase):
    def __init__(self, model: C2IModel):
        super().__init__()
        self.model = model
        bb, cfg = model.backbone, model.config
        self.cfg = cfg
        cos, sin = bb.rope_tables()
        self.cos, self.sin = cos.contiguous(), sin.contiguous()
        self.head = FusedHead(model.head)
        self.pool = CachePool(cfg.num_layers, cfg.num_heads, cfg.head_dim, bb.norm.weight.device, bb.norm.weight.dtype)
        self.head_dim, self.token_channels = cfg.head_dim, cfg.token_channels

    def _layers(self, x: torch.Tensor, cache: StaticKVCache, attend: Callable[[int, torch.Tensor], torch.Tensor]
                ) -> torch.Tensor:
        """``emb_norm``, every layer and the final norm over raw input embeddings ``x [B, T, dim]``."""
        cfg, bb = self.cfg, self.model.backbone
        b, t, dim = x.shape
        heads, d = cfg.num_heads, cfg.head_dim
        h, _ = rmsnorm_residual(x.reshape(b * t, dim), None, bb.emb_norm.weight, NORM_EPS, style="torch")
        residual = None
        for i, layer in enumerate(bb.layers):
            y, residual = rmsnorm_residual(h, residual, layer.attention_norm.weight, NORM_EPS, style="torch")
            qkv = F.linear(y, layer.attention.wqkv.weight).view(b, t, 3 * heads, d)
            q = rope_append_interleaved(qkv[:, :, :heads], qkv[:, :, heads:2 * heads], qkv[:, :, 2 * heads:],
                                        self.cos, self.sin, cache.keys[i], cache.values[i], cache.lengths)
            out = attend(i, q).transpose(1, 2).reshape(b * t, heads * d)
            h = F.linear(out, layer.attention.wo.weight)
            y, residual = rmsnorm_residual(h, residual, layer.ffn_norm.weight, NORM_EPS, style="torch")
            ff = layer.feed_forward
            h = F.linear(swiglu(F.linear(y, ff.w1.weight)), ff.w2.weight)
        y, _ = rmsnorm_residual(h, residual, bb.norm.weight, NORM_EPS, style="torch")
        return y.view(b, t, dim)

    def prefill(self, labels: torch.Tensor, cache: StaticKVCache) -> torch.Tensor:
        """Class and query tokens of every row; returns their hidden states ``[B, 64 + P − 1, dim]``."""
        cfg = self.cfg
        scale = cfg.head_dim ** -0.5
        lengths = torch.full((labels.shape[0],), cfg.num_prefix, dtype=torch.int32, device=labels.device)
        causal = torch.full_like(lengths, C2I_CAUSAL_LEN)
        cache.lengths.zero_()

        def attend(i: int, q: torch.Tensor) -> torch.Tensor:
            return block_attention_prefill(q, cache.keys[i], cache.values[i], lengths, causal, cfg.parallel, scale)

        hidden = self._layers(self.model.backbone.class_tokens(labels), cache, attend)
        cache.lengths.copy_(lengths)
        return hidden

    def generate_tokens(self, labels: list[int], num_steps: int, guidance: float,
                        generators: list[torch.Generator],
                        progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Tokens ``[B, h·w, C]`` of the conditional rows; ``generators``: one per label row."""
        cfg = self.cfg
        bb, p = self.model.backbone, cfg.parallel
        num_ar = cfg.num_tokens // p
        batch = len(labels)
        rows = labels + ([NUM_CLASSES] * batch if guidance > 1.0 else [])
        cache = self.pool.get(len(rows), cfg.num_prefix + cfg.num_tokens)
        hidden = self.prefill(torch.tensor(rows, device=cache.lengths.device), cache)[:, -p:]
        # the guidance schedule changes the scale every AR step: the sampler kernels read it on the device
        guided = guidance > 1.0
        step = self.ar_step(cache, hidden, batch, num_steps, guided, key=(cache.batch, num_steps, guided))
        out = []
        for i in range(num_ar):
            scale = linear_guidance(guidance, i, num_ar)
            block_pos = bb.pos_for_diff.weight[i * p:(i + 1) * p]
            if guidance > 1.0 and scale <= 1.0:
                # the release's step 0: an unguided sample over all 2B rows, each row keeping its own patch
                tokens = self._unguided_all_rows(step, block_pos, num_steps, generators)
            else:
                tokens = step.head(block_pos, scale, generators)
            out.append(tokens[:batch].clone())
            if i + 1 < num_ar:
                step.decode()
            if progress is not None:
                progress(i + 1, num_ar)
        return torch.cat(out, dim=1)

    def _unguided_all_rows(self, step: AutoregressiveStep, block_pos: torch.Tensor, num_steps: int,
                           generators: list[torch.Generator]) -> torch.Tensor:
        """Sample every row on its own (eager), and leave the tokens where ``decode`` reads them."""
        b = step.buffers
        rows, p, _ = b.hidden.shape
        noise = torch.empty(num_steps + 1, rows, p, self.cfg.token_channels, device=b.hidden.device)
        draw_step_noise(generators, rows // len(generators), num_steps, p, self.cfg.token_channels, noise)
        b.pos.copy_(block_pos)
        tokens = self.head.sample(b.hidden + b.pos, noise, 1.0, False, self.head.step_times(num_steps))
        step.set_tokens(tokens)
        return tokens

    def embed_feedback(self, tokens: torch.Tensor, buffers: StepBuffers) -> torch.Tensor:
        return self.model.backbone.embed_tokens(tokens)
