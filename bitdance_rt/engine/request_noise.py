"""Per-request noise for the engine's sampler: the same seed gives the same image whatever shares the batch.

Each request owns a ``torch.Generator``. Before an AR step's head loop, every request draws its start sample and
its N step noises, ``[N + 1, rows_of_request, P, C]``, from its own generator; the engine stacks them into one
static buffer the (graph-captured) loop reads. This order differs from the reference backend's, which draws one
batch-wide tensor per sampling step as the release does; the README says so.
"""

from __future__ import annotations

import torch


def draw_step_noise(generators: list[torch.Generator], rows_per_request: int, num_steps: int, patch: int,
                    channels: int, out: torch.Tensor) -> torch.Tensor:
    """Fill ``out [N + 1, rows_per_request·R, P, C]`` (float32) for R requests. The sampler's rows come in halves
    (conditional rows of all requests, then unconditional ones, when a step samples both unguided), so request r's
    j-th row is row ``j·R + r``. Entry 0 is the start sample, entry i + 1 the noise of sampling step i."""
    requests = len(generators)
    for r, gen in enumerate(generators):
        draws = torch.randn((num_steps + 1, rows_per_request, patch, channels), generator=gen,
                            device=gen.device, dtype=torch.float32)
        out[:, r::requests].copy_(draws)
    return out
