"""Text-to-image generation on the engine: one batch for conditional and unconditional rows, a static KV cache,
Triton kernels in every layer.

Rows: ``[conditional rows (prompt-major, num_images each), unconditional rows]`` in ONE batch (the release runs
two), each row with its own prompt length, padded for the prefill and tracked by the cache's device ``lengths``.
Per layer: ``rmsnorm_residual`` -> one GEMM for q/k/v -> ``qk_norm_rope_append`` (q/k RMSNorm, RoPE at each row's
positions, K/V written into the cache) -> ``block_attention_prefill`` / ``block_attention_decode`` -> ``o_proj``
-> ``rmsnorm_residual`` -> one GEMM for gate/up -> ``swiglu`` -> ``down_proj``. The prefill is one pass with the
block mask (the release makes two calls: a causal prefix, then the first block).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..kernels.block_attention import block_attention_prefill
from ..kernels.kv_append import qk_norm_rope_append
from ..kernels.rmsnorm_residual import rmsnorm_residual
from ..kernels.swiglu import swiglu
from ..loading.t2i_checkpoint import T2IModel
from ..prompt_tokenizer import chat_prompt
from ..reference.rope import rotate_half_tables
from ..reference.t2i_embeddings import t2i_position_table
from .ar_step import StepBuffers
from .engine_base import EngineBase
from .fused_weights import fuse_linears
from .head_loop import FusedHead
from .static_cache import CachePool, StaticKVCache

CACHE_LEN_QUANTUM = 256  # cache lengths are rounded up to this, so requests of similar length share a bucket


class T2IEngine(EngineBase):
    def __init__(self, model: T2IModel, max_positions: int = 8192):
        super().__init__()
        self.model = model
        bb, cfg = model.backbone, model.backbone_config
        self.cfg = cfg
        self.qkv = [fuse_linears([l.self_attn.q_proj, l.self_attn.k_proj, l.self_attn.v_proj]) for l in bb.layers]
        self.gate_up = [fuse_linears([l.mlp.gate_proj, l.mlp.up_proj])[0] for l in bb.layers]
        device = bb.embed_tokens.weight.device
        cos, sin = rotate_half_tables(torch.arange(max_positions, device=device), cfg.head_dim, cfg.rope_theta)
        self.cos, self.sin = cos.contiguous(), sin.contiguous()
        self.head = FusedHead(model.head)
        self.pool = CachePool(cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim, device,
                              bb.embed_tokens.weight.dtype)
        self.head_dim, self.token_channels = cfg.head_dim, model.token_channels

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
            y, residual = rmsnorm_residual(h, residual, layer.input_layernorm.weight, cfg.rms_norm_eps, style="hf")
            qkv = F.linear(y, *self.qkv[i]).view(b, t, hq + 2 * hkv, d)
            q = qk_norm_rope_append(qkv[:, :, :hq], qkv[:, :, hq:hq + hkv], qkv[:, :, hq + hkv:],
                                    attn.q_norm.weight, attn.k_norm.weight, cfg.rms_norm_eps, self.cos, self.sin,
                                    cache.keys[i], cache.values[i], cache.lengths)
            out = attend(i, q).transpose(1, 2).reshape(b * t, hq * d)
            h = F.linear(out, attn.o_proj.weight, attn.o_proj.bias)
            y, residual = rmsnorm_residual(h, residual, layer.post_attention_layernorm.weight, cfg.rms_norm_eps,
                                           style="hf")
            h = F.linear(swiglu(F.linear(y, self.gate_up[i])), layer.mlp.down_proj.weight)
        y, _ = rmsnorm_residual(h, residual, bb.norm.weight, cfg.rms_norm_eps, style="hf")
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
            return block_attention_prefill(q, cache.keys[i], cache.values[i], lengths, causal, p, scale)

        hidden = self._layers(self.model.backbone.embed(ids), cache, attend)
        cache.lengths.copy_(lengths)
        last = (lengths.long() - p)[:, None] + torch.arange(p, device=device)
        return hidden.gather(1, last[:, :, None].expand(-1, -1, hidden.shape[2]))

    # ------------------------------------------------------------------ generation
    def generate_tokens(self, prompts: list[str], negative_prompts: list[str | None], num_images: int,
                        grid: tuple[int, int], num_steps: int, guidance: float, generators: list[torch.Generator],
                        progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Tokens ``[prompts·num_images, h·w, C]`` in generation order; ``generators``: one per image row."""
        model, p = self.model, self.model.parallel
        h, w = grid
        num_ar = h * w // p
        start_ids = model.tokenizer.image_start_ids(h, w, p)
        rows = [model.tokenizer.encode(chat_prompt(pr)) + start_ids for pr in prompts for _ in range(num_images)]
        guided = guidance > 1.0
        if guided:
            rows += [model.tokenizer.encode(chat_prompt(neg)) + start_ids
                     for neg in negative_prompts for _ in range(num_images)]
        cond_rows = len(prompts) * num_images
        needed = max(map(len, rows)) + (num_ar - 1) * p
        cache = self.pool.get(len(rows), -(-needed // CACHE_LEN_QUANTUM) * CACHE_LEN_QUANTUM)
        device = cache.lengths.device
        pos = t2i_position_table(h, w, self.cfg.hidden_size, int(round(p ** 0.5))).to(device)
        hidden = self.prefill(rows, cache)
        step = self.ar_step(cache, hidden, cond_rows, num_steps, guided,
                            key=(cache.batch, cache.max_len, cond_rows, num_steps, guided))
        out = []
        for k in range(num_ar):
            out.append(step.head(pos[k * p:(k + 1) * p], guidance, generators)[:cond_rows].clone())
            if k + 1 < num_ar:
                step.decode()
            if progress is not None:
                progress(k + 1, num_ar)
        return torch.cat(out, dim=1)

    def embed_feedback(self, tokens: torch.Tensor, buffers: StepBuffers) -> torch.Tensor:
        """Projected tokens plus the block's position term, in the backbone's dtype."""
        dtype = self.model.backbone.embed_tokens.weight.dtype
        return (self.model.projector(tokens) + buffers.pos).to(dtype)
