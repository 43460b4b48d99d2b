"""``Ticket``: the scheduler's record of one request, from submit to its end.

It holds the checked request (``spec``), how it is batched (``placement``), the memory its join needs, its noise
(one generator per image, made when it joins), its slots, the AR steps it has done and its tokens so far
(``tokens``: int8 ``[images, h·w, C]`` on the device, zeros where nothing was sampled yet), and the times it was
submitted, started and finished sampling.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..engine.request_noise import RequestNoise
from ..families import Placement
from .handle import RequestHandle
from ..request import RequestSpec


@dataclass(eq=False)
class Ticket:
    handle: RequestHandle
    spec: RequestSpec
    placement: Placement
    join_bytes: int
    submitted: float = field(default_factory=time.perf_counter)
    noise: RequestNoise | None = None
    first_slot: int = -1
    steps_done: int = 0
    tokens: torch.Tensor | None = None
    started: float | None = None
    sampled: float | None = None

    @property
    def images(self) -> int:
        return self.spec.num_images

    @property
    def finished_sampling(self) -> bool:
        return self.steps_done == self.spec.num_ar

    def record(self, ar_step: int, tokens: torch.Tensor) -> None:
        """Keep the conditional tokens ``[images, P, C]`` of AR step ``ar_step``."""
        p = self.spec.parallel
        self.tokens[:, ar_step * p:(ar_step + 1) * p] = tokens
        self.steps_done = ar_step + 1
        if self.finished_sampling:
            self.sampled = time.perf_counter()
