"""The static state of one continuous batch: a fixed number of image slots sharing one backbone pass and one head
loop per AR step, each slot at its own AR step.

Slot ``s`` owns ``m`` consecutive cache rows, ``m·s .. m·s + m − 1`` (``m = 2`` when guided: the conditional row,
then the unconditional one; ``m = 1`` otherwise). With S slots, R = m·S rows, P tokens per AR step, W the backbone
width, C token channels and N sampling steps:

- ``cache``: a ``StaticKVCache`` of R rows; free rows are kept at length 0;
- ``hidden [R, P, W]`` (backbone dtype): each row's hidden states of its current block, the next head's input;
- ``pos [R, P, W]`` float32: each row's position term of its current block (rows sit at different AR steps);
- ``guidance_scales [S]`` float32: each slot's guidance scale at its AR step (read by the sampler on the device);
- ``feedback [R, P, C]`` (head dtype): the tokens the next decode feeds back, in cache-row order;
- ``live [R]`` int32: 1 on the rows of occupied slots; the decode multiplies the lengths by it, so free rows stay at
  length 0 whatever the pass computed for them;
- ``seeds [S]`` int64, ``ar_steps [S]`` int32, ``rows_in_request [S]`` int32: each slot's noise key (image seed,
  AR step, row of the image), kept current: the head loop draws its Philox noise from them
  (``reference/philox_noise.py``: ``keyed_normal``; the kernels draw the same).

``prefix(k)`` is the first k slots as a ``SlotBatch`` of views (same storage): the rows a bucketed step computes.
``steps`` caches the AR step built per prefix size (CUDA graphs on a GPU).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .static_cache import StaticKVCache


@dataclass
class SlotBatch:
    slots: int
    mult: int
    parallel: int
    num_steps: int
    cache: StaticKVCache
    hidden: torch.Tensor
    pos: torch.Tensor
    guidance_scales: torch.Tensor
    feedback: torch.Tensor
    live: torch.Tensor
    seeds: torch.Tensor
    ar_steps: torch.Tensor
    rows_in_request: torch.Tensor
    steps: dict = field(default_factory=dict)

    @property
    def guided(self) -> bool:
        return self.mult == 2

    @property
    def rows(self) -> int:
        return self.slots * self.mult

    @classmethod
    def allocate(cls, cache: StaticKVCache, slots: int, guided: bool, parallel: int, width: int, channels: int,
                 num_steps: int, hidden_dtype: torch.dtype, token_dtype: torch.dtype) -> "SlotBatch":
        mult = 2 if guided else 1
        rows = slots * mult
        if cache.batch != rows:
            raise ValueError(f"SlotBatch.allocate: {slots} slots of {mult} rows need a cache of {rows} rows, "
                             f"got {cache.batch}")
        device = cache.lengths.device
        return cls(slots=slots, mult=mult, parallel=parallel, num_steps=num_steps, cache=cache,
                   hidden=torch.zeros(rows, parallel, width, device=device, dtype=hidden_dtype),
                   pos=torch.zeros(rows, parallel, width, device=device),
                   guidance_scales=torch.ones(slots, device=device),
                   feedback=torch.zeros(rows, parallel, channels, device=device, dtype=token_dtype),
                   live=torch.zeros(rows, device=device, dtype=torch.int32),
                   seeds=torch.zeros(slots, device=device, dtype=torch.int64),
                   ar_steps=torch.zeros(slots, device=device, dtype=torch.int32),
                   rows_in_request=torch.zeros(slots, device=device, dtype=torch.int32))

    def row_range(self, first_slot: int, count: int) -> slice:
        """The cache rows of slots ``first_slot .. first_slot + count − 1``."""
        return slice(first_slot * self.mult, (first_slot + count) * self.mult)

    def prefix(self, slots: int) -> "SlotBatch":
        """The first ``slots`` slots, as views of this batch's tensors."""
        if not 1 <= slots <= self.slots:
            raise ValueError(f"SlotBatch.prefix: {slots} slots asked of a batch of {self.slots}")
        if slots == self.slots:
            return self
        rows = slots * self.mult
        return SlotBatch(slots=slots, mult=self.mult, parallel=self.parallel, num_steps=self.num_steps,
                         cache=self.cache.rows(0, rows), hidden=self.hidden[:rows], pos=self.pos[:rows],
                         guidance_scales=self.guidance_scales[:slots], feedback=self.feedback[:rows],
                         live=self.live[:rows], seeds=self.seeds[:slots], ar_steps=self.ar_steps[:slots],
                         rows_in_request=self.rows_in_request[:slots])

    def release(self, first_slot: int, count: int) -> None:
        """Free slots: their rows leave the live set and their cache lengths return to 0."""
        rows = self.row_range(first_slot, count)
        self.live[rows] = 0
        self.cache.lengths[rows] = 0

    @staticmethod
    def buffer_bytes(slots: int, mult: int, parallel: int, width: int, channels: int, hidden_bytes: int,
                     token_bytes: int) -> int:
        """Bytes of the static buffers ``allocate`` makes (everything but the cache)."""
        rows = slots * mult
        return (rows * parallel * width * (hidden_bytes + 4)      # hidden, pos (float32)
                + rows * parallel * channels * token_bytes         # feedback
                + slots * (4 + 8 + 4 + 4) + rows * 4)          # guidance_scales, seeds, ar_steps, rows_in_request; live

    def nbytes(self) -> int:
        return self.cache.nbytes() + self.buffer_bytes(self.slots, self.mult, self.parallel, self.hidden.shape[-1],
                                                       self.feedback.shape[-1], self.hidden.element_size(),
                                                       self.feedback.element_size())
