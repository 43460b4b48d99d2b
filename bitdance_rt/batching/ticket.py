"""``Ticket``: the scheduler's record of one request, from submit to its end: the checked request (``spec``), how
it is batched (``placement``), the memory its join needs, its first slot, the AR steps it has done, and the times
it was submitted, started and finished sampling. No tensors: the request's tokens live in the runner."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..families import Placement
from ..request import RequestSpec
from .handle import RequestHandle


@dataclass(eq=False)
class Ticket:
    handle: RequestHandle
    spec: RequestSpec
    placement: Placement
    join_bytes: int
    submitted: float = field(default_factory=time.perf_counter)
    first_slot: int = -1
    steps_done: int = 0
    started: float | None = None
    sampled: float | None = None

    @property
    def images(self) -> int:
        return self.spec.num_images

    @property
    def finished_sampling(self) -> bool:
        return self.steps_done == self.spec.num_ar

    def mark_sampled(self) -> None:
        self.sampled = time.perf_counter()
