"""What both families' engines share: the decode step over the static cache and the per-bucket AR steps.

A subclass provides ``_layers(x, cache, attend)`` (its backbone on the kernels), ``head`` (a ``FusedHead``) and
``embed_feedback(tokens, buffers)`` (the next block's input embeddings from the sampled tokens).
"""

from __future__ import annotations

from typing import Callable

import torch

from ..kernels.block_attention import block_attention_decode
from .ar_step import AutoregressiveStep, StepBuffers, build_step
from .cuda_graphs import graphs_available
from .head_loop import FusedHead
from .static_cache import StaticKVCache


class EngineBase:
    head: FusedHead
    head_dim: int
    token_channels: int

    def __init__(self):
        self.use_cuda_graphs = True
        self._graphs: dict[tuple, AutoregressiveStep] = {}

    def _layers(self, x: torch.Tensor, cache: StaticKVCache,
                attend: Callable[[int, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def embed_feedback(self, tokens: torch.Tensor, buffers: StepBuffers) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, embeds: torch.Tensor, cache: StaticKVCache) -> torch.Tensor:
        """One block of P embeddings per row ``[B, P, width]`` -> hidden states ``[B, P, width]``; the block attends
        to each row's cache and to itself; advances the cache lengths on the device."""
        scale = self.head_dim ** -0.5

        def attend(i: int, q: torch.Tensor) -> torch.Tensor:
            return block_attention_decode(q, cache.keys[i], cache.values[i], cache.lengths, scale)

        hidden = self._layers(embeds, cache, attend)
        cache.lengths += embeds.shape[1]
        return hidden

    def ar_step(self, cache: StaticKVCache, hidden: torch.Tensor, noise_rows: int, num_steps: int,
                guided: bool, key: tuple) -> AutoregressiveStep:
        """The AR step for this shape bucket, its ``buffers.hidden`` set to ``hidden``: on CUDA captured into graphs
        once per ``key`` and replayed for every later request; eager elsewhere."""
        graphed = self.use_cuda_graphs and graphs_available(hidden.device)
        if not graphed or key not in self._graphs:
            times = self.head.step_times(num_steps)

            def head(b: StepBuffers) -> torch.Tensor:
                return self.head.sample(b.hidden + b.pos, b.noise, b.cfg, guided, times)

            def decode(b: StepBuffers, tokens: torch.Tensor) -> torch.Tensor:
                return b.hidden.copy_(self.decode(self.embed_feedback(tokens, b), cache))

            buffers = StepBuffers.allocate(hidden, num_steps, noise_rows, self.token_channels)
            step = build_step(buffers, head, decode, cache, graphed)
            if not graphed:
                return step
            self._graphs[key] = step
        step = self._graphs[key]
        step.buffers.hidden.copy_(hidden)
        return step
