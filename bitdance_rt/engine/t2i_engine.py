"""Text-to-image generation on the engine: conditional and unconditional rows in one batch, a static KV cache,
Triton kernels in every layer, continuous batching of requests at different AR steps.

Rows: each image slot of a ``SlotBatch`` owns its conditional row and (guided) its unconditional row; each row has
its own prompt length, padded for the prefill and tracked by the cache's device ``lengths``. A joining request is
prefilled on its own rows (``join``), then steps with the batch. Per layer: ``rmsnorm_residual`` -> one GEMM for
q/k/v -> ``qk_norm_rope_append`` (q/k RMSNorm, RoPE at each row's positions, K/V written into the cache) ->
``block_attention_prefill`` / ``block_attention_decode`` -> ``o_proj`` -> ``rmsnorm_residual`` -> one GEMM for
gate/up -> ``swiglu`` -> ``down_proj``. The prefill is one pass with the block mask (the release makes two calls: a
causal prefix, then the first block).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..ops import OpSet
from ..reference.rope import rotate_half_tables
from ..reference.t2i_embeddings import t2i_position_table
from .engine_base import EngineBase
from .fused_weights import fuse_linears
from .head_loop import FusedHead
from .slot_batch import SlotBatch
from .static_cache import StaticKVCache


class T2IEngine(EngineBase):
    def __init__(self, family, ops: OpSet):
        super().__init__(ops)
        self.family = family
        self.model = model = family.model
        max_positions = family.max_positions
        bb, cfg = model.backbone, model.backbone_config
        self.cfg = cfg
        self.qkv = [fuse_linears([l.self_attn.q_proj, l.self_attn.k_proj, l.self_attn.v_proj]) for l in bb.layers]
        self.gate_up = [fuse_linears([l.mlp.gate_proj, l.mlp.up_proj])[0] for l in bb.layers]
        device = bb.embed_tokens.weight.device
        cos, sin = rotate_half_tables(torch.arange(max_positions, device=device), cfg.head_dim, cfg.rope_theta)
        self.cos, self.sin = cos.contiguous(), sin.contiguous()
        self.max_positions = max_positions
        self.head = FusedHead(model.head, ops)
        self.head_dim, self.token_channels = cfg.head_dim, model.token_channels
        self.width, self.patch = cfg.hidden_size, model.parallel
        self.cache_shape = (cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim)
        self.num_heads, self.ffn_width = cfg.num_attention_heads, cfg.intermediate_size
        self._positions: dict[tuple[int, int], torch.Tensor] = {}

    # ------------------------------------------------------------------ backbone
    def _layers(self, x: torch.Tensor, cache: StaticKVCache, attend: Callable[[int, torch.Tensor], torch.Tensor]
                ) -> torch.Tensor:
        """All layers and the final norm over ``x [B, T, hidden]``; ``attend(layer, q [B, Hq, T, D])``."""
        cfg, bb = self.cfg, self.model.backbone
        b, t, hidden = x.shape
        hq, hkv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        h, residual = x.reshape(b * t, hidden), None
        for i, layer in enumerate(bb.layers):
            attn = layer.self_attn
            y, residual = self.ops.rmsnorm_residual(h, residual, layer.input_layernorm.weight, cfg.rms_norm_eps,
                                                    style="hf")
            qkv = F.linear(y, *self.qkv[i]).view(b, t, hq + 2 * hkv, d)
            q = self.ops.qk_norm_rope_append(qkv[:, :, :hq], qkv[:, :, hq:hq + hkv], qkv[:, :, hq + hkv:],
                                             attn.q_norm.weight, attn.k_norm.weight, cfg.rms_norm_eps, self.cos,
                                             self.sin, cache.keys[i], cache.values[i], cache.lengths)
            out = attend(i, q).transpose(1, 2).reshape(b * t, hq * d)
            h = F.linear(out, attn.o_proj.weight, attn.o_proj.bias)
            y, residual = self.ops.rmsnorm_residual(h, residual, layer.post_attention_layernorm.weight,
                                                    cfg.rms_norm_eps, style="hf")
            h = F.linear(self.ops.swiglu(F.linear(y, self.gate_up[i])), layer.mlp.down_proj.weight)
        y, _ = self.ops.rmsnorm_residual(h, residual, bb.norm.weight, cfg.rms_norm_eps, style="hf")
        return y.view(b, t, hidden)

    def prefill(self, rows: list[list[int]], cache: StaticKVCache) -> torch.Tensor:
        """Run every row's prompt and start tokens; returns the last P hidden states per row ``[B, P, hidden]``
        and leaves ``cache.lengths`` at each row's token count."""
        p, scale = self.model.parallel, self.cfg.head_dim ** -0.5
        device = cache.lengths.device
        longest = max(map(len, rows))
        ids = torch.zeros(len(rows), longest, dtype=torch.long, device=device)
        for r, seq in enumerate(rows):
            ids[r, :len(seq)] = torch.tensor(seq, device=device)
        lengths = torch.tensor([len(seq) for seq in rows], dtype=torch.int32, device=device)
        causal = lengths - p  # the prompt, <|vision_start|> and <|res_H|>; the first block follows
        cache.lengths.zero_()

        def attend(i: int, q: torch.Tensor) -> torch.Tensor:
            return self.ops.block_attention_prefill(q, cache.keys[i], cache.values[i], lengths, causal, p, scale)

        hidden = self._layers(self.model.backbone.embed(ids), cache, attend)
        cache.lengths.copy_(lengths)
        last = (lengths.long() - p)[:, None] + torch.arange(p, device=device)
        return hidden.gather(1, last[:, :, None].expand(-1, -1, hidden.shape[2]))

    # ------------------------------------------------------------------ continuous batching
    @property
    def hidden_dtype(self) -> torch.dtype:
        return self.model.backbone.embed_tokens.weight.dtype

    def block_positions(self, grid: tuple[int, int]) -> torch.Tensor:
        """The 2-D position term of every AR step, ``[h·w / P, P, hidden]`` float32 (cached per grid)."""
        if grid not in self._positions:
            p = self.model.parallel
            table = t2i_position_table(grid[0], grid[1], self.cfg.hidden_size, int(round(p ** 0.5)))
            self._positions[grid] = table.to(self.device).view(-1, p, self.cfg.hidden_size)
        return self._positions[grid]

    def join(self, batch: SlotBatch, first_slot: int, rows: list[list[int]]) -> None:
        """A joining request's prefill, its rows only: ``rows`` (``family.cache_rows``) into the cache rows of its slots
        ``first_slot ..``; their hidden states of the first block land in ``batch.hidden``."""
        span = batch.row_range(first_slot, len(rows) // batch.mult)
        if span.stop - span.start != len(rows):
            raise ValueError(f"T2IEngine.join: {len(rows)} rows do not fill whole slots of {batch.mult} rows")
        batch.hidden[span] = self.prefill(rows, batch.cache.rows(span.start, span.stop))
        batch.live[span] = 1

    def embed_feedback(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Projected tokens plus each row's position term, in the backbone's dtype."""
        dtype = self.model.backbone.embed_tokens.weight.dtype
        return (self.model.projector(tokens) + pos).to(dtype)
