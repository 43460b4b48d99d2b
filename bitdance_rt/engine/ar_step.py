"""One autoregressive step of a continuous batch (``SlotBatch``), eager or replayed from CUDA graphs.

An AR step is two calls on the batch's static tensors: ``head()`` runs the head's whole sampling loop on every
row's ``hidden + pos`` with the noise and guidance scales the caller wrote into the batch, writes the sampled tokens
into ``batch.feedback`` and returns the conditional rows' tokens ``[S, P, C]`` in slot order; ``decode()`` feeds
``batch.feedback`` back through the backbone into ``batch.hidden`` and advances the cache lengths of live rows.
``build_step`` returns the eager form, or captures both calls into CUDA graphs (once per batch and prefix size; the
batch keeps the result and later steps only replay it).
"""

from __future__ import annotations

from typing import Callable

import torch

from .cuda_graphs import CapturedStep


class AutoregressiveStep:
    def __init__(self, run_head: Callable[[], torch.Tensor], run_decode: Callable[[], object]):
        self._run_head, self._run_decode = run_head, run_decode

    def head(self) -> torch.Tensor:
        return self._run_head()

    def decode(self) -> None:
        self._run_decode()


def build_step(head_fn: Callable[[], torch.Tensor], decode_fn: Callable[[], object],
               state: list[torch.Tensor], graphed: bool) -> AutoregressiveStep:
    """``head_fn() -> tokens`` and ``decode_fn()`` read and write only static tensors. With ``graphed`` both are
    captured now; the warm-up runs change the batch (the decode advances lengths and overwrites the hidden states),
    so every tensor of ``state`` is saved before and restored after them."""
    if not graphed:
        return AutoregressiveStep(head_fn, decode_fn)
    saved = [t.clone() for t in state]

    def restore() -> None:
        for t, s in zip(state, saved):
            t.copy_(s)
    head = CapturedStep(head_fn)
    decode = CapturedStep(decode_fn, restore=restore)
    return AutoregressiveStep(head.replay, decode.replay)


def build_leading_steps(fn: Callable[[], object], state: list[torch.Tensor], graphed: bool) -> Callable[[], object]:
    """The leading unguided AR steps of a join (the class-conditional release's step 0) as one callable over the
    join's static scratch tensors: ``fn`` eagerly, or captured once into a CUDA graph (its warm-up advances the
    scratch cache's lengths, so ``state`` is saved before and restored after it) and replayed after every
    prefill."""
    if not graphed:
        return fn
    saved = [t.clone() for t in state]

    def restore() -> None:
        for t, s in zip(state, saved):
            t.copy_(s)
    return CapturedStep(fn, restore=restore).replay
