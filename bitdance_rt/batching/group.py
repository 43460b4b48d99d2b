"""``Group``: the requests of one group key: a FIFO queue, the slot table of their continuous batch, and the
requests active in it. Plain Python: the batch's tensors belong to the runner (``engine/runner.py``), which the
group addresses by its key and slot numbers.

``join(runner, tickets)`` places admitted requests (their slots taken): the runner prefills them on their own rows
(one request per pass for serving; ``generate`` joins all of a call's requests in one pass) and runs their leading
unguided AR steps; then they are active. ``step(runner, invariant)`` advances every active request by one AR step
in one pass over the batch; requests that made their last step leave it, freeing their slots.

A step computes the whole batch (``invariant``: every slot, so the shapes, and with them every row's arithmetic,
never depend on how many requests share the batch) or the smallest power-of-two prefix covering the occupied
slots (faster when few are active; whether a row's result is then independent of the crowd depends on the GEMM
library's choice of kernel per shape).

Only the stepping thread calls ``join``, ``step`` and ``leave`` and changes ``active`` and the slot table; other
threads read counts. The queue is changed under the scheduler's lock.
"""

from __future__ import annotations

from collections import deque

from ..engine.runner import Active, Join
from .slots import SlotTable
from .ticket import Ticket


class Group:
    def __init__(self, key: tuple, owner: str, slots: int, ticket: Ticket, reserve_bytes: int):
        self.key = (owner, key)  # the runner's batch key: one batch per scheduler and group
        self.max_len = ticket.placement.max_len
        self.queue: deque[Ticket] = deque()
        self.active: list[Ticket] = []
        self.table = SlotTable(slots)
        self.reserve_bytes = reserve_bytes
        self.reserved = False  # its batch counts against the memory budget (set at the first admission)

    @property
    def slots(self) -> int:
        return self.table.size

    @property
    def idle(self) -> bool:
        """No request queued, admitted or active (admitted ones hold slots before they join)."""
        return not self.queue and self.table.used == 0

    def release_batch(self, runner) -> None:
        """Drop the batch and its graphs (an idle group evicted for memory, or one whose step failed)."""
        runner.close(self.key)

    def join(self, runner, tickets: list[Ticket]) -> list[int]:
        """Prefill admitted requests whose slots (taken) follow each other, in one pass, then run their leading
        unguided AR steps; returns the AR steps they completed here. On an exception their slots are freed and
        none is active."""
        joins = [Join(t.handle.id, t.spec, t.first_slot, t.placement.rows) for t in tickets]
        try:
            done = runner.join(self.key, self.slots, self.max_len, joins)
        except BaseException:
            for t in tickets:
                self.table.free(t.first_slot, t.images)
            raise
        for t in tickets:
            t.steps_done = len(done)
            if t.finished_sampling:
                t.mark_sampled()
                self.table.free(t.first_slot, t.images)
            else:
                self.active.append(t)
        return done

    def step(self, runner, invariant: bool) -> list[Ticket]:
        """One AR step of every active request; returns the tickets that advanced (finished ones are no longer
        active and their slots are free)."""
        advanced = list(self.active)
        slots = self.slots if invariant else self.table.bucket()
        runner.step(self.key, slots, [Active(t.handle.id, t.first_slot, t.images, t.steps_done, t.spec)
                                      for t in advanced])
        for t in advanced:
            t.steps_done += 1
            if t.finished_sampling:
                t.mark_sampled()
                self.active.remove(t)
                self.table.free(t.first_slot, t.images)
        return advanced

    def leave(self, runner, ticket: Ticket) -> None:
        """Free an active request's slots (its rows back to length 0) and drop it from the batch."""
        if ticket in self.active:
            self.active.remove(ticket)
            runner.leave(self.key, ticket.first_slot, ticket.images)
            self.table.free(ticket.first_slot, ticket.images)

    def fail_all(self, runner) -> list[Ticket]:
        """After a failed step: every active request leaves, and the batch (possibly half-written) is dropped."""
        failed, self.active = self.active, []
        for t in failed:
            self.table.free(t.first_slot, t.images)
        self.release_batch(runner)
        return failed
