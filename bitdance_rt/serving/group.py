"""``Group``: the requests of one group key: a FIFO queue and a continuous batch (``SlotBatch``) of fixed size.

``join(tickets)`` places admitted requests: their prefill on their own rows (one request per pass for serving;
``generate`` joins all of a call's requests in one pass, as one batch), then (class-conditional, guided) the
leading unguided AR steps on those rows, then they are active. ``step()`` advances every active request by one AR
step with one head loop and one backbone pass over the batch: it writes each request's position term, guidance
scale and noise for its own AR step into the batch, runs the head, keeps each request's tokens, frees the slots of
requests that made their last step (lengths back to 0), and decodes the rest.

A step computes the whole batch (``invariant``: every slot, so the shapes, and with them every row's arithmetic,
never depend on how many requests share the batch) or the smallest power-of-two prefix covering the occupied
slots (faster when few are active; whether a row's result is then independent of the crowd depends on the GEMM
library's choice of kernel per shape).

Only the stepping thread calls ``join`` and ``step`` and changes ``active`` and the slot table; other threads read
counts. The queue is changed under the scheduler's lock.
"""

from __future__ import annotations

from collections import deque

import torch

from ..engine.request_noise import RequestNoise
from ..engine.slot_batch import SlotBatch
from .slots import SlotTable
from .ticket import Ticket


class Group:
    def __init__(self, key: tuple, owner: str, slots: int, ticket: Ticket, reserve_bytes: int):
        spec = ticket.spec
        self.key, self.owner = key, owner
        self.mult = 2 if spec.guided else 1
        self.num_steps, self.grid, self.patch = spec.num_steps, spec.grid, spec.parallel
        self.max_len = ticket.placement.max_len
        self.queue: deque[Ticket] = deque()
        self.active: list[Ticket] = []
        self.table = SlotTable(slots)
        self.reserve_bytes = reserve_bytes
        self.reserved = False  # its batch counts against the memory budget (set at the first admission)
        self.batch: SlotBatch | None = None
        self._positions: torch.Tensor | None = None

    @property
    def slots(self) -> int:
        return self.table.size

    @property
    def idle(self) -> bool:
        """No request queued, admitted or active (admitted ones hold slots before they join)."""
        return not self.queue and self.table.used == 0

    # ---------------------------------------------------------------- device work (stepping thread)
    def _ensure_batch(self, engine) -> SlotBatch:
        if self.batch is None:
            self.batch = engine.slot_batch((self.owner, self.key), self.slots, self.max_len, self.num_steps,
                                           self.mult == 2)
            self._positions = engine.block_positions(self.grid)
        return self.batch

    def release_batch(self, engine) -> None:
        """Drop the batch and its graphs (an idle group evicted for memory, or one whose step failed)."""
        engine.release_batch((self.owner, self.key), self.slots)
        self.batch, self._positions = None, None

    def join(self, engine, family, tickets: list[Ticket]) -> dict[Ticket, list[int]]:
        """Prefill admitted requests whose slots (taken) follow each other, in one pass over their rows only (one
        request per pass unless the scheduler joins several), then run their leading unguided AR steps; returns
        the AR steps each completed here. On an exception their slots are freed and none is active."""
        batch = self._ensure_batch(engine)
        first = tickets[0].first_slot
        count = sum(t.images for t in tickets)
        device = batch.hidden.device
        try:
            for t in tickets:
                t.noise = RequestNoise(list(t.spec.image_seeds), device, engine.ops)
                t.tokens = torch.zeros(t.images, t.spec.num_ar * t.spec.parallel, engine.token_channels,
                                       dtype=torch.int8, device=device)
            engine.join(batch, first, [row for t in tickets for row in t.placement.rows])
            batch.seeds[first:first + count] = torch.tensor([s for t in tickets for s in t.spec.image_seeds])
            batch.rows_in_request[first:first + count] = 0  # each image is keyed by its own seed; row 0: cond
            done: dict[Ticket, list[int]] = {t: [] for t in tickets}
            for k in range(family.leading_unguided_steps(tickets[0].spec.guidance, tickets[0].spec.num_ar)):
                noise = torch.empty(self.num_steps + 1, 2, count, self.patch, engine.token_channels, device=device)
                for t in tickets:  # each image draws its two rows; the sampler takes cond rows, then null-class rows
                    j = t.first_slot - first
                    own = torch.empty(self.num_steps + 1, 2 * t.images, self.patch, engine.token_channels,
                                      device=device)
                    noise[:, :, j:j + t.images] = t.noise.draw(k, 2, self.num_steps, self.patch,
                                                               engine.token_channels, own).unflatten(1, (2, t.images))
                tokens = engine._unguided_all_rows(batch, first, count, self._positions[k], noise.flatten(1, 2))
                for t in tickets:
                    j = 2 * (t.first_slot - first)
                    t.record(k, tokens[j:j + 2 * t.images:2])
                    done[t].append(k + 1)
                if not tickets[0].finished_sampling:
                    batch.pos[batch.row_range(first, count)] = self._positions[k]
                    engine.decode_rows(batch, first, count, tokens)
        except BaseException:
            batch.release(first, count)
            self.table.free(first, count)
            raise
        for t in tickets:
            if t.finished_sampling:
                batch.release(t.first_slot, t.images)
                self.table.free(t.first_slot, t.images)
            else:
                self.active.append(t)
        return done

    def _load(self, family) -> None:
        """Write every active request's inputs of its next AR step into the batch: position terms, guidance
        scales and AR steps (the noise keys the head loop draws from) in one copy each."""
        batch = self.batch
        slot_steps, scales = [0] * self.slots, [1.0] * self.slots
        for t in self.active:
            k = t.steps_done
            span = slice(t.first_slot, t.first_slot + t.images)
            slot_steps[span] = [k] * t.images
            scales[span] = [family.guidance_at(t.spec.guidance, k, t.spec.num_ar)] * t.images
        steps = torch.tensor(slot_steps)
        batch.ar_steps.copy_(steps)
        batch.cfg.copy_(torch.tensor(scales))
        rows = steps.repeat_interleave(self.mult).to(batch.pos.device)
        torch.index_select(self._positions, 0, rows, out=batch.pos)

    def step(self, engine, family, invariant: bool) -> list[Ticket]:
        """One AR step of every active request; returns the tickets that advanced (finished ones are no longer
        active and their slots are free)."""
        self._load(family)
        step = engine.ar_step(self.batch, self.slots if invariant else self.table.bucket())
        tokens = step.head()
        advanced = list(self.active)
        for ticket in advanced:
            first = ticket.first_slot
            ticket.record(ticket.steps_done, tokens[first:first + ticket.images])
            if ticket.finished_sampling:
                self.leave(ticket)
        if self.active:
            step.decode()
        return advanced

    def leave(self, ticket: Ticket) -> None:
        """Free an active request's slots (lengths back to 0) and drop it from the batch."""
        if ticket in self.active:
            self.active.remove(ticket)
            self.batch.release(ticket.first_slot, ticket.images)
            self.table.free(ticket.first_slot, ticket.images)

    def fail_all(self, engine) -> list[Ticket]:
        """After a failed step: every active request leaves, and the batch (possibly half-written) is dropped."""
        failed, self.active = self.active, []
        for t in failed:
            self.table.free(t.first_slot, t.images)
        self.release_batch(engine)
        return failed
