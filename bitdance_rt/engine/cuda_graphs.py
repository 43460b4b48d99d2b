"""CUDA graphs for the engine's per-AR-step work: capture once per shape bucket, then only replay.

``CapturedStep(fn, restore)`` runs ``fn`` once eagerly on a side stream (Triton compiles its kernels on first
launch, which cannot happen inside a capture), undoes that run's side effects with ``restore`` (the decode step
advances the cache lengths), then captures ``fn`` into a graph. ``fn`` must read and write only static tensors
(the engine's per-bucket buffers): every replay re-runs the same kernels on the same addresses, reading the
device-side counters (cache lengths) that the captured step itself advances. ``pool`` (a
``torch.cuda.graph_pool_handle()``) lets several graphs share one private memory pool (the token decoder's passes
of different sizes); safe when they never run concurrently and each replay's output is consumed before another
graph of the pool replays.
"""

from __future__ import annotations

from typing import Callable

import torch


class CapturedStep:
    def __init__(self, fn: Callable[[], torch.Tensor], restore: Callable[[], None] | None = None, pool=None):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        if restore is not None:
            restore()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.output = fn()

    def replay(self) -> torch.Tensor:
        self.graph.replay()
        return self.output


def graphs_available(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_available()
