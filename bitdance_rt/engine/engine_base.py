"""What both families' engines share: the decode step over the static cache, and continuous batches of image slots
(``SlotBatch``) with their per-prefix AR steps.

A subclass provides ``_layers(x, cache, attend)`` (its backbone on the kernels), ``head`` (a ``FusedHead``),
``width`` (the backbone width), ``embed_feedback(tokens, pos)`` (the next block's input embeddings from the sampled
tokens and each row's position term) and ``block_positions(grid)`` (the position terms of every AR step).

A batch's AR step computes every row of the slots it covers (free slots too: their rows are computed and ignored),
so with a fixed prefix size a row's result depends only on its own inputs, never on what shares the batch.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..ops import OpSet
from .ar_step import AutoregressiveStep, build_step
from .cuda_graphs import graphs_available
from .head_loop import FusedHead
from .slot_batch import SlotBatch
from .static_cache import StaticKVCache

# the operations an AR step (backbone decode and head loop) calls, all captured into its CUDA graphs
STEP_OPS = ("block_attention_decode", "qk_norm_rope_append", "rope_append_interleaved", "rmsnorm_residual", "swiglu",
            "layernorm_modulate", "gated_residual", "patch_attention", "sampler_step_keyed", "keyed_noise",
            "sampler_final")


class EngineBase:
    head: FusedHead
    head_dim: int
    token_channels: int
    width: int
    cache_shape: tuple[int, int, int]  # layers, KV heads, head dim

    def __init__(self, ops: OpSet):
        self.ops = ops
        # graphs need every operation of a step capturable (not so the PyTorch attention: it reads lengths on the host)
        self.use_cuda_graphs = ops.capturable(STEP_OPS)

    def _layers(self, x: torch.Tensor, cache: StaticKVCache,
                attend: Callable[[int, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def embed_feedback(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return self.head.adaln_weight.device

    @property
    def hidden_dtype(self) -> torch.dtype:
        raise NotImplementedError

    @property
    def token_dtype(self) -> torch.dtype:
        """dtype of the head's sampled tokens (the head's weights)."""
        return self.head.head.input_proj.weight.dtype

    def decode(self, embeds: torch.Tensor, cache: StaticKVCache) -> torch.Tensor:
        """One block of P embeddings per row ``[B, P, width]`` -> hidden states ``[B, P, width]``; the block attends
        to each row's cache and to itself; advances the cache lengths on the device."""
        scale = self.head_dim ** -0.5

        def attend(i: int, q: torch.Tensor) -> torch.Tensor:
            return self.ops.block_attention_decode(q, cache.keys[i], cache.values[i], cache.lengths, scale)

        hidden = self._layers(embeds, cache, attend)
        cache.lengths += embeds.shape[1]
        return hidden

    # ------------------------------------------------------------------ continuous batches
    def allocate_batch(self, slots: int, max_len: int, num_steps: int, guided: bool) -> SlotBatch:
        """A new batch of ``slots`` image slots with a cache of ``max_len`` positions per row (the runner keeps it;
        its CUDA graphs, built by ``ar_step``, stay valid for later requests while it is kept)."""
        layers, kv_heads, head_dim = self.cache_shape
        rows = slots * (2 if guided else 1)
        cache = StaticKVCache(layers, rows, kv_heads, max_len, head_dim, self.device, self.hidden_dtype)
        return SlotBatch.allocate(cache, slots, guided, self.patch, self.width, self.token_channels, num_steps,
                                  self.hidden_dtype, self.token_dtype)

    def ar_step(self, batch: SlotBatch, slots: int) -> AutoregressiveStep:
        """The AR step over the first ``slots`` slots of ``batch``: built once per prefix size and kept by the
        batch; on CUDA captured into graphs (the caller fills pos, cfg and noise before each ``head()``)."""
        if slots not in batch.steps:
            view = batch.prefix(slots)
            graphed = self.use_cuda_graphs and graphs_available(view.hidden.device)
            times = self.head.step_times(view.num_steps)
            p, w, c, m = view.patch, self.width, self.token_channels, view.mult

            def head() -> torch.Tensor:
                cond = view.hidden + view.pos
                if view.guided:  # cache rows (cond, uncond) per slot -> the sampler's halves [cond..., uncond...]
                    cond = cond.view(slots, 2, p, w).transpose(0, 1).reshape(2 * slots, p, w)
                keys = (view.seeds, view.ar_steps, view.rows_in_request)
                tokens = self.head.sample_keyed(cond, keys, view.cfg, view.guided, times)
                if view.guided:
                    view.feedback.view(slots, 2, p, c).copy_(tokens.view(2, slots, p, c).transpose(0, 1))
                else:
                    view.feedback.copy_(tokens)
                return view.feedback.view(slots, m, p, c)[:, 0]

            def decode() -> torch.Tensor:
                view.hidden.copy_(self.decode(self.embed_feedback(view.feedback, view.pos), view.cache))
                return view.cache.lengths.mul_(view.live)

            batch.steps[slots] = build_step(head, decode, [view.hidden, view.cache.lengths], graphed)
        return batch.steps[slots]

    def decode_rows(self, batch: SlotBatch, first_slot: int, count: int, tokens: torch.Tensor) -> None:
        """Feed ``tokens [rows, P, C]`` (cache-row order) back through the rows of ``count`` slots only (eager):
        their hidden states are replaced and their lengths advance by P."""
        rows = batch.row_range(first_slot, count)
        cache = batch.cache.rows(rows.start, rows.stop)
        batch.hidden[rows] = self.decode(self.embed_feedback(tokens, batch.pos[rows]), cache)
