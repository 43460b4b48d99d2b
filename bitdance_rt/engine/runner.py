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
sampling step, and a step writes every slot's AR step and guidance scale in one copy each. No host-to-device copy of
a join or a step blocks the host: they go from pinned memory without waiting (``HostStaging``, ``_upload``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..outputs import format_images, to_pixels
from .engine import Engine
from .memory import ModelDims, batch_bytes, decode_chunk, join_bytes
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
    tokens: torch.Tensor             # int8 [slots, AR steps·P, C]: each slot's tokens so far (its request's)
    prefill_shape: tuple[int, int]   # (rows, length) of every join's prefill pass
    staging: "HostStaging"


class HostStaging:
    """Host buffers of a batch's per-round inputs (each slot's AR step and guidance scale), pinned on CUDA, copied
    to the device without blocking; before the host rewrites them it waits for the previous round's copies
    (an event), so a copy in flight never reads a half-written buffer."""

    def __init__(self, slots: int, device: torch.device):
        pin = device.type == "cuda" and torch.cuda.is_available()
        self.steps = torch.zeros(slots, dtype=torch.int32, pin_memory=pin)
        self.scales = torch.ones(slots, dtype=torch.float32, pin_memory=pin)
        self._event = torch.cuda.Event() if pin else None

    def begin(self):
        """The host buffers as NumPy arrays ``(steps int32 [slots], scales float32 [slots])``, reset to step 0 and
        scale 1, once the previous round's copies have read them."""
        if self._event is not None:
            self._event.synchronize()
        steps, scales = self.steps.numpy(), self.scales.numpy()
        steps.fill(0)
        scales.fill(1.0)
        return steps, scales

    def send(self, steps: torch.Tensor, scales: torch.Tensor) -> None:
        steps.copy_(self.steps, non_blocking=True)
        scales.copy_(self.scales, non_blocking=True)
        if self._event is not None:
            self._event.record()


class ModelRunner:
    def __init__(self, family, engine: Engine):
        self.family, self.engine = family, engine
        self.dims = ModelDims.of(engine, family)
        self._batches: dict[tuple, _Batch] = {}
        self._tokens: dict[str, tuple[tuple, int, int]] = {}   # request id -> (batch key, first slot, images)

    @property
    def device(self) -> torch.device:
        return self.engine.device

    # ---------------------------------------------------------------- what the scheduler asks
    def placement(self, spec):
        return self.family.placement(spec)

    def leading_unguided_steps(self, spec) -> int:
        return self.family.leading_unguided_steps(spec.guidance, spec.num_ar)

    def batch_bytes(self, spec, slots: int, max_len: int) -> int:
        """The memory a batch of ``slots`` slots for ``spec``'s group holds while it exists (with the join scratch
        it keeps when the family has leading unguided AR steps)."""
        return batch_bytes(self.dims, slots, 2 if spec.guided else 1, max_len, spec.num_steps,
                           self.family.prefill_length(max_len, spec.num_ar), self.leading_unguided_steps(spec))

    def join_bytes(self, spec, slots: int, max_len: int) -> int:
        """The memory ``spec`` needs for a moment when it joins a batch of ``slots`` slots (the prefill of the
        batch's fixed shape) and when it leaves (decoding its images)."""
        rows, length = slots * (2 if spec.guided else 1), self.family.prefill_length(max_len, spec.num_ar)
        return join_bytes(self.dims, rows, length, self.leading_unguided_steps(spec), spec.num_images, spec.height,
                          spec.width, spec.output_type != "tokens")

    # ---------------------------------------------------------------- batches
    def _batch(self, key: tuple, slots: int, max_len: int, spec) -> _Batch:
        if key not in self._batches:
            sb = self.engine.allocate_batch(slots, max_len, spec.num_steps, spec.guided)
            tokens = torch.zeros(slots, spec.num_ar * spec.parallel, self.engine.token_channels, dtype=torch.int8,
                                 device=self.device)
            shape = (sb.rows, self.family.prefill_length(max_len, spec.num_ar))
            self._batches[key] = _Batch(sb, self.engine.block_positions(spec.grid), tokens, shape,
                                        HostStaging(slots, self.device))
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
        """Prefill ``joins`` (anywhere in the batch, the same leading unguided AR steps) in one fixed-shape pass
        and run their leading unguided AR steps (``Engine.join``): the device work does not grow with the number
        of joining requests, and a row's arithmetic does not depend on them. Returns the AR steps completed here
        (``[1, .., k]``). On an exception their rows are freed and nothing of theirs is kept."""
        spec0 = joins[0].spec
        b = self._batch(key, slots, max_len, spec0)
        batch = b.slot_batch
        m, p = batch.mult, spec0.parallel
        slot_list = [j.first_slot + i for j in joins for i in range(j.spec.num_images)]
        rows = [row for j in joins for row in j.rows]
        if len(rows) != len(slot_list) * m:
            raise ValueError(f"ModelRunner.join: {len(rows)} rows do not fill {len(slot_list)} slots of {m} rows")
        total = b.prefill_shape[0]
        seeds = [s for j in joins for s in j.spec.image_seeds]
        host = torch.tensor([[s * m + r for s in slot_list for r in range(m)] + [0] * (total - len(rows)),
                             [s for s in seeds for _ in range(m)] + [0] * (total - len(rows)),
                             [r for _ in seeds for r in range(m)] + [0] * (total - len(rows))], dtype=torch.int64)
        index = self._upload(host)
        row_index, slot_index = index[0, :len(rows)], index[0, :len(rows):m] // m
        leading = self.leading_unguided_steps(spec0)
        for j in joins:
            self._tokens[j.request_id] = (key, j.first_slot, j.spec.num_images)
        try:
            b.tokens.index_fill_(0, slot_index, 0)
            made = self.engine.join(batch, row_index, rows, b.prefill_shape, [b.positions[k] for k in range(leading)],
                                    (index[1], index[2].to(torch.int32)), decode_last=leading < spec0.num_ar)
            batch.seeds.index_copy_(0, slot_index, index[1, :len(rows):m])
            batch.rows_in_request.index_fill_(0, slot_index, 0)  # each image is keyed by its own seed; row 0: cond
            for k, tokens in enumerate(made):  # the conditional rows: cache rows m·s
                b.tokens[:, k * p:(k + 1) * p].index_copy_(0, slot_index, tokens[:len(rows):m].to(torch.int8))
            done = list(range(1, leading + 1))
            if done and done[-1] == spec0.num_ar:  # finished on their own rows
                self._release(batch, row_index)
        except BaseException:
            self._release(batch, row_index)
            for j in joins:
                self._tokens.pop(j.request_id, None)
            raise
        return done

    def _upload(self, host: torch.Tensor) -> torch.Tensor:
        """A small host tensor (row indices, keys) on the device without blocking the host: on CUDA pinned first and
        copied non-blocking (PyTorch's pinned-memory cache keeps the source until the copy has run), so the host
        goes on scheduling while the device works."""
        if self.device.type != "cuda":
            return host.to(self.device)
        return host.pin_memory().to(self.device, non_blocking=True)

    @staticmethod
    def _release(batch: SlotBatch, row_index: torch.Tensor) -> None:
        batch.live.index_fill_(0, row_index, 0)
        batch.cache.lengths.index_fill_(0, row_index, 0)

    def step(self, key: tuple, slots: int, active: list[Active]) -> None:
        """One AR step of every request of ``active`` in batch ``key``, computing its first ``slots`` slots: their
        guidance scales and AR steps go to the device in one non-blocking copy each (pinned on CUDA), their
        position terms and noise keys follow on the device; the head samples every row; the tokens of every slot
        land in the batch's token buffer in one scatter; requests that made their last step leave the batch (one
        index fill per tensor); the rest are fed back through the backbone. The device work is the same for any
        number of active requests."""
        b = self._batches[key]
        batch = b.slot_batch
        slot_steps, scales = b.staging.begin()
        leaving: list[int] = []
        for a in active:  # one span write per request, straight into the (pinned) host buffers
            span = slice(a.first_slot, a.first_slot + a.images)
            slot_steps[span] = a.ar_step
            scales[span] = self.family.guidance_at(a.spec.guidance, a.ar_step, a.spec.num_ar)
            if a.ar_step + 1 == a.spec.num_ar:
                leaving.extend(range(a.first_slot * batch.mult, (a.first_slot + a.images) * batch.mult))
        b.staging.send(batch.ar_steps, batch.guidance_scales)
        torch.index_select(b.positions, 0, batch.ar_steps.repeat_interleave(batch.mult), out=batch.pos)
        step = self.engine.ar_step(batch, slots)
        tokens = step.head()
        p, c = batch.parallel, tokens.shape[-1]
        cols = batch.ar_steps[:slots, None] * p + torch.arange(p, device=tokens.device)
        b.tokens[:slots].scatter_(1, cols[:, :, None].expand(-1, -1, c).long(), tokens.to(torch.int8))
        if leaving:
            self._release(batch, self._upload(torch.tensor(leaving, dtype=torch.int64)))
        if len(leaving) < sum(a.images for a in active) * batch.mult:
            step.decode()

    def leave(self, key: tuple, first_slot: int, count: int) -> None:
        """Free the rows of slots ``first_slot ..`` (their lengths back to 0) in batch ``key``."""
        b = self._batches.get(key)
        if b is not None:
            b.slot_batch.release(first_slot, count)

    # ---------------------------------------------------------------- results
    def tokens(self, request_id: str) -> torch.Tensor | None:
        """The request's tokens so far, int8 ``[images, h·w, C]`` on the device (0 where not yet sampled): a view
        of its batch's token buffer."""
        where = self._tokens.get(request_id)
        if where is None or where[0] not in self._batches:
            return None
        key, first, images = where
        return self._batches[key].tokens[first:first + images]

    def decode(self, tokens: torch.Tensor, spec, output_type: str):
        """Images of ``tokens`` for ``spec`` as ``output_type`` (decoded with the request's seed, for GAN
        decoders' noise)."""
        generator = None if spec.seed is None else torch.Generator(device=self.device).manual_seed(spec.seed)
        return format_images(self._family_decode(tokens, spec.grid, generator), output_type)

    def _family_decode(self, tokens: torch.Tensor, grid: tuple[int, int], generator) -> torch.Tensor:
        """The family's decode with the engine's decoder (``Engine.token_decoder``: the kernels' decoder, chunked
        by ``memory.decode_chunk``; the reference module with the PyTorch operations)."""
        return self.family.decode(tokens, grid, generator, self.engine.token_decoder)

    def output(self, request_id: str, spec) -> tuple[object, torch.Tensor]:
        """A finished request's images (as its ``output_type``; None for ``"tokens"``) and its tokens on the CPU;
        its state is dropped."""
        return self.outputs([(request_id, spec)])[0]

    def outputs(self, finished: list[tuple[str, object]], together: bool = True) -> list[tuple[object, torch.Tensor]]:
        """``output`` for requests that finished together: per batch one gather of their tokens and one copy to
        the host; per image size one decoder pass over all their images (GAN decoders draw each request's noise
        map from its own seed, one draw per request) and one conversion to pixels. Their state is dropped."""
        results: list = [None] * len(finished)
        by_batch: dict[tuple, list[int]] = {}
        for i, (rid, _) in enumerate(finished):
            by_batch.setdefault(self._tokens[rid][0], []).append(i)
        for key, members in by_batch.items():
            slot_list = [self._tokens[finished[i][0]][1] + k for i in members
                         for k in range(self._tokens[finished[i][0]][2])]
            index = torch.tensor(slot_list, dtype=torch.int64).to(self.device)
            gathered = self._batches[key].tokens.index_select(0, index)
            host = gathered.to("cpu").numpy()
            start, decoding = 0, []
            for i in members:
                rid, spec = finished[i]
                n = self._tokens[rid][2]
                results[i] = [None, torch.from_numpy(host[start:start + n].copy())]
                if spec.output_type != "tokens":
                    decoding.append((i, start, n))
                start += n
            self._decode_together(gathered, [(finished[i][1], s, n, results[i]) for i, s, n in decoding], together)
        for rid, _ in finished:
            self._tokens.pop(rid, None)
        return [tuple(r) for r in results]

    def _decode_together(self, tokens: torch.Tensor, parts: list, together: bool = True) -> None:
        """Decode ``parts`` (spec, first row of ``tokens``, images, result to fill) of one batch (one size): one
        decoder pass over all their images (chunked when their maps would exceed ``memory.DECODE_PASS_BYTES``), or
        with ``together=False`` one pass per request (its images then never depend on what finished with it: a
        decoder pass's arithmetic may depend on its batch size; the kernels' decoder splits a request's pass into
        chunks of ``memory.decode_chunk`` images, which depend only on the request's own image count and size);
        one conversion to pixels for the PIL/NumPy ones."""
        if not parts:
            return
        spec0 = parts[0][0]
        if self.family.model.decoder_layout.gan_decoder or not together:
            images = torch.cat([self._family_decode(tokens[s:s + n], spec.grid, None if spec.seed is None else
                                                    torch.Generator(device=self.device).manual_seed(spec.seed))
                                for spec, s, n, _ in parts])
        else:  # in chunks of images whose decoder maps fit DECODE_PASS_BYTES (memory.decode_chunk)
            index = torch.tensor([s + k for _, s, n, _ in parts for k in range(n)], dtype=torch.int64)
            picked = tokens.index_select(0, index.to(tokens.device))
            chunk = decode_chunk(self.dims, spec0.height, spec0.width)
            pieces = [self._family_decode(picked[i:i + chunk], spec0.grid, None) for i in range(0, len(index), chunk)]
            images = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
        firsts, start = [], 0
        for _, _, n, _ in parts:
            firsts.append(start)
            start += n
        pixels = to_pixels(images).numpy() if any(spec.output_type in ("pil", "np") for spec, *_ in parts) else None
        for (spec, _, n, result), first in zip(parts, firsts):
            if spec.output_type == "pt":
                result[0] = images[first:first + n]
            elif spec.output_type == "np":
                result[0] = pixels[first:first + n].copy()
            else:
                from PIL import Image
                result[0] = [Image.fromarray(px) for px in pixels[first:first + n]]

    def preview(self, request_id: str, spec, output_type: str):
        """The request's images from the tokens made so far (zeros elsewhere: see ``batching/preview.py``)."""
        tokens = self.tokens(request_id)
        if tokens is None:
            tokens = torch.zeros(spec.num_images, spec.grid[0] * spec.grid[1], self.engine.token_channels,
                                 dtype=torch.int8, device=self.device)
        return self.decode(tokens.clone(), spec, output_type)

    def forget(self, request_id: str) -> None:
        self._tokens.pop(request_id, None)
