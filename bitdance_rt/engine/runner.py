"""``ModelRunner``: the seam between the scheduler (``bitdance_rt.batching``: queues, slots, who runs when, in plain
Python) and the device. The runner owns every device tensor of serving: the continuous batches (``SlotBatch``:
KV cache, hidden states, position terms, noise keys), each request's noise seeds and token buffer, and the decoding
of tokens into images. The scheduler speaks to it in request ids, slot numbers and AR steps only:

- ``placement(spec)`` / ``leading_unguided_steps(spec)``: how a request batches (its family's answer);
- ``batch_bytes(...)`` / ``join_bytes(...)``: memory estimates for the scheduler's budget (``memory.py``);
- ``join(key, slots, max_len, joins)``: prefill joining requests on their own rows (one pass for all of
  ``joins``), run their leading unguided AR steps; returns the AR steps they completed;
- ``step(key, slots, active)``: one AR step of every active request of a batch (``slots``: the prefix of slots
  computed); the tokens land in each request's buffer; requests making their last step leave the batch;
- ``leave(key, first_slot, count)``: free the rows of a request that stops early (cancelled);
- ``close(key)``: drop a batch (its cache, buffers and CUDA graphs);
- ``output(request_id, spec)`` / ``preview(request_id, spec, output_type)`` / ``tokens(request_id)`` /
  ``forget(request_id)``: a request's result, its picture so far, its tokens, and dropping its state.

Device work is O(1) in the number of requests per call: a join draws the keyed noise of all its rows in one call per
sampling step, and a step writes every slot's AR step and guidance scale in one copy each.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..outputs import format_images
from .engine import Engine
from .memory import ModelDims, batch_bytes, join_bytes
from .slot_batch import SlotBatch


@dataclass(frozen=True)
class Join:
    """A request joining a batch: its id, resolved spec (``request.RequestSpec``), first slot and cache rows."""
    request_id: str
    spec: object
    first_slot: int
    rows: list


@dataclass(frozen=True)
class Active:
    """An active request in a step: its id, first slot, image count, the AR step it makes and its spec."""
    request_id: str
    first_slot: int
    images: int
    ar_step: int
    spec: object


@dataclass
class _Batch:
    slot_batch: SlotBatch
    positions: torch.Tensor          # [AR steps, P, W] float32: each AR step's position term
    guidance: list[float] = field(default_factory=list)


class ModelRunner:
    def __init__(self, family, engine: Engine):
        self.family, self.engine = family, engine
        self.dims = ModelDims.of(engine, family)
        self._batches: dict[tuple, _Batch] = {}
        self._tokens: dict[str, torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        return self.engine.device

    # ---------------------------------------------------------------- what the scheduler asks
    def placement(self, spec):
        return self.family.placement(spec)

    def leading_unguided_steps(self, spec) -> int:
        return self.family.leading_unguided_steps(spec.guidance, spec.num_ar)

    def batch_bytes(self, spec, slots: int, max_len: int) -> int:
        """The memory a batch of ``slots`` slots for ``spec``'s group holds while it exists."""
        return batch_bytes(self.dims, slots, 2 if spec.guided else 1, max_len, spec.num_steps)

    def join_bytes(self, spec, prompt_len: int) -> int:
        """The memory ``spec`` needs for a moment when it joins (its prefill) and leaves (decoding its images)."""
        return join_bytes(self.dims, spec.rows, prompt_len, spec.num_images, spec.height, spec.width,
                          spec.output_type != "tokens")

    # ---------------------------------------------------------------- batches
    def _batch(self, key: tuple, slots: int, max_len: int, spec) -> _Batch:
        if key not in self._batches:
            sb = self.engine.allocate_batch(slots, max_len, spec.num_steps, spec.guided)
            self._batches[key] = _Batch(sb, self.engine.block_positions(spec.grid))
        return self._batches[key]

    def slot_batch(self, key: tuple) -> SlotBatch | None:
        """The device state of a batch (for inspection), or None when it does not exist."""
        b = self._batches.get(key)
        return None if b is None else b.slot_batch

    def close(self, key: tuple) -> None:
        """Drop a batch: its cache, buffers and graphs return to the allocator."""
        self._batches.pop(key, None)

    # ---------------------------------------------------------------- requests
    def join(self, key: tuple, slots: int, max_len: int, joins: list[Join]) -> list[int]:
        """Prefill ``joins`` (whose slots follow each other) in one pass over their rows, then run their leading
        unguided AR steps (the same for all of them). Returns the AR steps completed here (``[1, .., k]``). On an
        exception their rows are freed and nothing of theirs is kept."""
        spec0 = joins[0].spec
        b = self._batch(key, slots, max_len, spec0)
        batch, engine = b.slot_batch, self.engine
        first = joins[0].first_slot
        count = sum(j.spec.num_images for j in joins)
        device = batch.hidden.device
        try:
            for j in joins:
                self._tokens[j.request_id] = torch.zeros(j.spec.num_images, j.spec.num_ar * j.spec.parallel,
                                                         engine.token_channels, dtype=torch.int8, device=device)
            engine.join(batch, first, [row for j in joins for row in j.rows])
            seeds = torch.tensor([s for j in joins for s in j.spec.image_seeds], dtype=torch.int64)
            batch.seeds[first:first + count] = seeds.to(device)
            batch.rows_in_request[first:first + count] = 0  # each image is keyed by its own seed; row 0: cond
            done = []
            for k in range(self.leading_unguided_steps(spec0)):
                noise = self._unguided_noise(seeds.to(device), k, spec0.num_steps, spec0.parallel)
                tokens = engine.unguided_rows(batch, first, count, b.positions[k], noise)
                self._record_all(joins, k, tokens[0::2])  # cache-row order: (cond, null) per image
                done.append(k + 1)
                if k + 1 < spec0.num_ar:
                    batch.pos[batch.row_range(first, count)] = b.positions[k]
                    engine.decode_rows(batch, first, count, tokens)
            if done and done[-1] == spec0.num_ar:  # finished on their own rows
                batch.release(first, count)
        except BaseException:
            batch.release(first, count)
            for j in joins:
                self._tokens.pop(j.request_id, None)
            raise
        return done

    def _unguided_noise(self, seeds: torch.Tensor, ar_step: int, num_steps: int, patch: int) -> torch.Tensor:
        """Keyed noise ``[N + 1, 2·images, P, C]`` of an unguided step over both rows of every image, in the
        sampler's row order: the conditional rows (row 0 of each image's key), then the null-class rows (row 1)."""
        images = seeds.shape[0]
        rows = torch.arange(2, dtype=torch.int32, device=seeds.device).repeat_interleave(images)
        steps = torch.full_like(rows, ar_step)
        both = seeds.repeat(2)
        c = self.engine.token_channels
        return torch.stack([self.engine.ops.keyed_noise(both, steps, rows, i, patch, c) for i in range(num_steps + 1)])

    def _record_all(self, joins: list[Join], ar_step: int, tokens: torch.Tensor) -> None:
        start = 0
        for j in joins:
            n = j.spec.num_images
            self._record(j.request_id, j.spec, ar_step, tokens[start:start + n])
            start += n

    def _record(self, request_id: str, spec, ar_step: int, tokens: torch.Tensor) -> None:
        p = spec.parallel
        self._tokens[request_id][:, ar_step * p:(ar_step + 1) * p] = tokens

    def step(self, key: tuple, slots: int, active: list[Active]) -> None:
        """One AR step of every request of ``active`` in batch ``key``, computing its first ``slots`` slots: their
        position terms, guidance scales and noise keys for their own AR steps go into the batch in one copy each;
        the head samples every row; each request keeps its tokens; requests that made their last step leave the
        batch; the rest are fed back through the backbone."""
        b = self._batches[key]
        batch = b.slot_batch
        slot_steps = [0] * batch.slots
        scales = [1.0] * batch.slots
        for a in active:
            span = slice(a.first_slot, a.first_slot + a.images)
            slot_steps[span] = [a.ar_step] * a.images
            scales[span] = [self.family.guidance_at(a.spec.guidance, a.ar_step, a.spec.num_ar)] * a.images
        steps = torch.tensor(slot_steps, dtype=torch.int32)
        batch.ar_steps.copy_(steps, non_blocking=True)
        batch.cfg.copy_(torch.tensor(scales, dtype=torch.float32), non_blocking=True)
        rows = steps.repeat_interleave(batch.mult).to(batch.pos.device, non_blocking=True)
        torch.index_select(b.positions, 0, rows, out=batch.pos)
        step = self.engine.ar_step(batch, slots)
        tokens = step.head()
        staying = False
        for a in active:
            self._record(a.request_id, a.spec, a.ar_step, tokens[a.first_slot:a.first_slot + a.images])
            if a.ar_step + 1 == a.spec.num_ar:
                batch.release(a.first_slot, a.images)
            else:
                staying = True
        if staying:
            step.decode()

    def leave(self, key: tuple, first_slot: int, count: int) -> None:
        """Free the rows of slots ``first_slot ..`` (their lengths back to 0) in batch ``key``."""
        b = self._batches.get(key)
        if b is not None:
            b.slot_batch.release(first_slot, count)

    # ---------------------------------------------------------------- results
    def tokens(self, request_id: str) -> torch.Tensor | None:
        """The request's tokens so far, int8 ``[images, h·w, C]`` on the device (0 where not yet sampled)."""
        return self._tokens.get(request_id)

    def decode(self, tokens: torch.Tensor, spec, output_type: str):
        """Images of ``tokens`` for ``spec`` as ``output_type`` (decoded with the request's seed, for GAN
        decoders' noise)."""
        generator = None if spec.seed is None else torch.Generator(device=self.device).manual_seed(spec.seed)
        return format_images(self.family.decode(tokens, spec.grid, generator), output_type)

    def output(self, request_id: str, spec) -> tuple[object, torch.Tensor]:
        """A finished request's images (as its ``output_type``; None for ``"tokens"``) and its tokens on the CPU;
        its state is dropped."""
        tokens = self._tokens.pop(request_id)
        images = None if spec.output_type == "tokens" else self.decode(tokens, spec, spec.output_type)
        return images, tokens.to("cpu")

    def preview(self, request_id: str, spec, output_type: str):
        """The request's images from the tokens made so far (zeros elsewhere: see ``batching/preview.py``)."""
        tokens = self._tokens.get(request_id)
        if tokens is None:
            tokens = torch.zeros(spec.num_images, spec.grid[0] * spec.grid[1], self.engine.token_channels,
                                 dtype=torch.int8, device=self.device)
        return self.decode(tokens.clone(), spec, output_type)

    def forget(self, request_id: str) -> None:
        self._tokens.pop(request_id, None)
