"""One autoregressive step of the engine, eager or replayed from CUDA graphs.

An AR step is two calls on static buffers: ``head(block_pos, generators)`` runs the head's whole sampling loop on
``buffers.hidden + buffers.pos`` with per-request noise and returns every row's tokens; ``decode()`` feeds those
tokens back through the backbone into ``buffers.hidden``. ``build_step`` returns the eager form, or captures both
calls into CUDA graphs (once per shape bucket; the caller keeps the result and reuses it for later requests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .cuda_graphs import CapturedStep
from .request_noise import draw_step_noise
from .static_cache import StaticKVCache


@dataclass
class StepBuffers:
    """Static tensors of one AR step: the last block's hidden states ``[rows, P, hidden]``, its position term
    ``[P, hidden]`` (float32), the guidance scale ``[1]`` (float32, read by the sampler kernels on the device) and
    the head loop's noise ``[N + 1, noise rows, P, C]``."""
    hidden: torch.Tensor
    pos: torch.Tensor
    cfg: torch.Tensor
    noise: torch.Tensor

    @classmethod
    def allocate(cls, hidden: torch.Tensor, num_steps: int, noise_rows: int, channels: int) -> "StepBuffers":
        rows, patch, width = hidden.shape
        device = hidden.device
        return cls(hidden=hidden.clone(), pos=torch.zeros(patch, width, device=device),
                   cfg=torch.ones(1, device=device),
                   noise=torch.zeros(num_steps + 1, noise_rows, patch, channels, device=device))


class AutoregressiveStep:
    def __init__(self, buffers: StepBuffers, run_head: Callable[[], torch.Tensor],
                 run_decode: Callable[[], torch.Tensor], set_tokens: Callable[[torch.Tensor], None]):
        self.buffers, self._run_head, self._run_decode = buffers, run_head, run_decode
        self.set_tokens = set_tokens  # hand the next decode tokens sampled outside ``head`` (same shape)

    def head(self, block_pos: torch.Tensor, cfg: float, generators: list[torch.Generator],
             rows_per_request: int = 1) -> torch.Tensor:
        b = self.buffers
        b.pos.copy_(block_pos)
        b.cfg.fill_(cfg)
        draw_step_noise(generators, rows_per_request, b.noise.shape[0] - 1, b.noise.shape[2], b.noise.shape[3],
                        b.noise)
        return self._run_head()

    def decode(self) -> None:
        self._run_decode()


def build_step(buffers: StepBuffers, head_fn: Callable[[StepBuffers], torch.Tensor],
               decode_fn: Callable[[StepBuffers, torch.Tensor], torch.Tensor], cache: StaticKVCache,
               graphed: bool) -> AutoregressiveStep:
    """``head_fn(buffers) -> tokens``; ``decode_fn(buffers, tokens)`` writes ``buffers.hidden`` and advances the
    cache. With ``graphed``, both are captured now (the decode's warm-up run is undone by restoring the lengths)."""
    if not graphed:
        tokens: list[torch.Tensor] = []

        def run_head() -> torch.Tensor:
            tokens[:] = [head_fn(buffers)]
            return tokens[0]

        def set_tokens(t: torch.Tensor) -> None:
            tokens[:] = [t]
        return AutoregressiveStep(buffers, run_head, lambda: decode_fn(buffers, tokens[0]), set_tokens)
    head = CapturedStep(lambda: head_fn(buffers))
    saved = cache.lengths.clone()
    decode = CapturedStep(lambda: decode_fn(buffers, head.output), restore=lambda: cache.lengths.copy_(saved))
    return AutoregressiveStep(buffers, head.replay, decode.replay, lambda t: head.output.copy_(t))
