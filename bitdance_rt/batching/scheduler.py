"""``Scheduler``: continuous batching of image requests over one model runner (``engine/runner.py``). It never
touches a tensor: it decides which requests run, where (slots) and when, and asks the runner to do the work.

- ``submit(request)`` checks the request, refuses one that can never run (more rows than ``max_batch``, or more
  memory than ``memory_budget`` even alone) with the reason, and queues it in its group (``families``: requests
  of one image size, P, step count and guidance mode share a batch). It returns a ``RequestHandle`` at once.
- ``step()`` is one scheduler round: requests that were cancelled leave their batches; queued requests are admitted
  (FIFO within a group, groups visited round-robin from a rotating start, while slots and memory allow) and
  prefilled on their own rows; then every group with active requests advances them all by one AR step (one head
  loop and one backbone pass per group); requests that made their last step leave, freeing their slots, and their
  images are decoded. Returns whether there was anything to do.
- ``max_batch``: rows per batch (an image is 2 rows when guided): a group's batch has ``max_batch // rows per
  image`` slots. ``memory_budget`` (bytes, or None for no limit): the batches held plus the joining request's
  prefill and image decoding must fit (``memory.py``'s estimates); a request that does not fit now waits; batches
  of idle groups are kept for reuse (their CUDA graphs too) and dropped when the memory is needed. A request that
  waits for memory blocks later requests from reserving new batches, so it is not starved.
- ``batch_invariant`` (default): every step computes the whole batch, so a request's image is the same alone or in
  a crowd; False computes the smallest power-of-two prefix of slots covering the occupied ones (see ``group.py``).
- Joins: the requests admitted into a group in one round are prefilled (and run their leading unguided steps) in
  one pass, in a shape fixed per batch (all its rows, the group's prefill length), so the device work of a join
  does not grow with the requests joining and a request's prefill never depends on what joins with it.

Threads: ``submit``, ``cancel``, ``stats``, ``preview`` and the handles' methods may be called from any thread.
``step`` may be called from any thread, one at a time (concurrent calls wait for each other); a ``Worker``
(``start_worker``) runs it in a background thread that owns the device while work exists and sleeps otherwise. All
device work (steps, previews' decoding) runs under ``device_lock``, which the runtime shares with ``generate``.
Listeners are called from the stepping thread after the round's locks are released (a listener may call any
handle or scheduler method).
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import torch

from ..errors import InvalidRequestError
from ..outputs import GenerationOutput
from .group import Group
from .handle import RequestHandle
from ..request import ImageRequest, RequestSpec, resolve_request
from .limits import DEFAULT_MAX_BATCH, check_max_batch, format_bytes, parse_memory_budget
from .preview import check_preview_type
from .stats import ServingStats
from .ticket import Ticket
from .worker import Worker

class Scheduler:
    def __init__(self, runner, *, max_batch: int = DEFAULT_MAX_BATCH,
                 memory_budget: int | str | None = None, batch_invariant: bool = True, name: str = "serve",
                 device_lock: threading.RLock | None = None):
        self.runner, self.name = runner, name
        self.max_batch = check_max_batch(max_batch)
        self.memory_budget = parse_memory_budget(memory_budget)
        self.batch_invariant = bool(batch_invariant)
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.device_lock = device_lock or threading.RLock()
        self._step_lock = threading.Lock()
        self._groups: dict[tuple, Group] = {}
        self._live: dict[str, tuple[Ticket, Group]] = {}
        self._rotation = 0
        self._ids = itertools.count()
        self.stats_counter = ServingStats()
        self.worker = Worker(self)

    # ---------------------------------------------------------------- submitting
    def slots_for(self, spec: RequestSpec) -> int:
        return max(1, self.max_batch // (2 if spec.guided else 1))

    def submit(self, request: ImageRequest) -> RequestHandle:
        """Check ``request`` (``request.resolve_request``) and queue it."""
        return self.submit_spec(resolve_request(request, self.runner.family))

    def submit_spec(self, spec: RequestSpec) -> RequestHandle:
        """Queue a resolved request; refused when it can never fit ``max_batch`` or ``memory_budget``."""
        placement = self.runner.placement(spec)
        if spec.rows > self.max_batch:
            raise InvalidRequestError(
                f"{spec.num_images} image(s){' with guidance' if spec.guided else ''} need {spec.rows} batch rows; "
                f"this runtime's max_batch is {self.max_batch} rows. Ask for fewer images per request, or raise "
                "max_batch.")
        slots = self.slots_for(spec)
        reserve = self.runner.batch_bytes(spec, slots, placement.max_len)
        transient = self.runner.join_bytes(spec, slots, placement.max_len)
        if self.memory_budget is not None and reserve + transient > self.memory_budget:
            raise InvalidRequestError(
                f"this request can never fit the memory budget: its batch of {slots} slots "
                f"({spec.height}x{spec.width}, {spec.num_steps} sampling steps, cache of {placement.max_len} "
                f"positions) needs {format_bytes(reserve)} and joining it {format_bytes(transient)} more, "
                f"{format_bytes(reserve + transient)} in all; the budget is {format_bytes(self.memory_budget)}. "
                "Raise memory_budget, or lower max_batch or the image size.")
        with self.cond:
            handle = RequestHandle(f"{self.name}-{next(self._ids)}", spec, self)
            ticket = Ticket(handle, spec, placement, transient)
            key = (placement.key, slots)
            group = self._groups.get(key)
            if group is None:
                group = self._groups[key] = Group(placement.key, self.name, slots, ticket, reserve)
            group.queue.append(ticket)
            self._live[handle.id] = (ticket, group)
            self.cond.notify_all()
        return handle

    # ---------------------------------------------------------------- cancelling and previews
    def cancel(self, handle: RequestHandle) -> bool:
        with self.cond:
            event = handle._end("cancelled")
            if event is None:
                return False
            entry = self._live.pop(handle.id, None)
            if entry is not None and entry[0] in entry[1].queue:
                entry[1].queue.remove(entry[0])
            self.stats_counter.record_end("cancelled", 0)
            self.cond.notify_all()
        handle._emit([event])
        return True

    def cancel_all(self) -> int:
        with self.lock:
            handles = [t.handle for t, _ in self._live.values()]
        return sum(self.cancel(h) for h in handles)

    def preview(self, handle: RequestHandle, output_type: str = "pil") -> Any:
        check_preview_type(output_type)
        with self.device_lock, torch.no_grad():  # not while a step writes the tokens
            final = handle.final_tokens()
            if final is not None:
                return self.runner.decode(final, handle.spec, output_type)
            return self.runner.preview(handle.id, handle.spec, output_type)

    def tokens_of(self, handle: RequestHandle):
        """The request's tokens so far (the runner's buffer, on the device), or None before it joins."""
        return self.runner.tokens(handle.id)

    # ---------------------------------------------------------------- state (lock held)
    def has_work(self) -> bool:
        with self.lock:
            return any(g.queue or g.active for g in self._groups.values())

    def _reserved_bytes(self) -> int:
        return sum(g.reserve_bytes for g in self._groups.values() if g.reserved)

    def _fits(self, group: Group, ticket: Ticket, may_reserve: bool) -> bool:
        if self.memory_budget is None:
            return True
        new = 0 if group.reserved else group.reserve_bytes
        if new and not may_reserve:
            return False
        need = new + ticket.join_bytes
        if self._reserved_bytes() + need <= self.memory_budget:
            return True
        for other in self._groups.values():  # drop idle groups' batches until it fits
            if other is not group and other.reserved and other.idle:
                other.release_batch(self.runner)
                other.reserved = False
                if self._reserved_bytes() + need <= self.memory_budget:
                    return True
        return False

    def _admit(self) -> list[tuple[Group, Ticket]]:
        """Queued requests that get slots and memory now, FIFO per group, groups round-robin."""
        groups = [g for g in self._groups.values() if g.queue]
        if not groups:
            return []
        start = self._rotation % len(groups)
        self._rotation += 1
        groups = groups[start:] + groups[:start]
        admitted: list[tuple[Group, Ticket]] = []
        oldest_blocked: float | None = None  # submit time of the oldest request waiting for memory
        progress = True
        while progress:
            progress = False
            for g in groups:
                if not g.queue:
                    continue
                t = g.queue[0]
                first = g.table.find(t.images)
                if first is None:
                    continue
                may_reserve = oldest_blocked is None or t.submitted <= oldest_blocked
                if not self._fits(g, t, may_reserve):
                    oldest_blocked = t.submitted if oldest_blocked is None else min(oldest_blocked, t.submitted)
                    continue
                g.queue.popleft()
                g.table.take(first, t.images, t)
                g.reserved = True
                t.first_slot, t.started = first, time.perf_counter()
                t.handle._set_running()
                admitted.append((g, t))
                progress = True
        return admitted

    def _join_units(self, admitted: list[tuple[Group, Ticket]]) -> list[tuple[Group, list[Ticket]]]:
        """The requests admitted into one group this round (and that run the same leading steps) join in one pass,
        wherever their slots are: the runner prefills them in a shape fixed per batch, so a request's prefill
        does not depend on what joins with it (``ModelRunner.join``)."""
        units: dict[tuple, tuple[Group, list[Ticket]]] = {}
        for g, t in admitted:
            units.setdefault((id(g), self._leading(t.spec)), (g, []))[1].append(t)
        return list(units.values())

    def _join(self, g: Group, tickets: list[Ticket]) -> list[tuple[list[Ticket], list[int], Exception | None]]:
        """Join ``tickets`` in one pass; if that fails and there were several, each is retried alone (its slots
        taken again), so a request whose join fails fails alone."""
        try:
            return [(tickets, g.join(self.runner, tickets), None)]
        except Exception as e:
            if len(tickets) == 1:
                return [(tickets, [], e)]
        results = []
        for t in tickets:
            g.table.take(t.first_slot, t.images, t)
            try:
                results.append(([t], g.join(self.runner, [t]), None))
            except Exception as e:
                results.append(([t], [], e))
        return results

    def _leading(self, spec: RequestSpec) -> int:
        return self.runner.leading_unguided_steps(spec)

    def _reap(self) -> None:
        """Requests cancelled while running leave their batches (device lock held)."""
        for g in self._groups.values():
            for t in [t for t in g.active if t.handle.done]:
                g.leave(self.runner, t)
                self.runner.forget(t.handle.id)

    # ---------------------------------------------------------------- stepping
    def step(self) -> bool:
        """One round (see the module docstring). Returns False when there was nothing to do."""
        with self._step_lock:
            t0 = time.perf_counter()
            with self.device_lock, torch.no_grad():
                with self.lock:
                    self._reap()
                    admitted = self._admit()
                if not admitted and not any(g.active for g in list(self._groups.values())):
                    return False
                notices = self._run_round(admitted)
            with self.lock:
                self.stats_counter.record_step(time.perf_counter() - t0)
        for handle, events in notices:
            handle._emit(events)
        return True

    def _run_round(self, admitted: list[tuple[Group, Ticket]]) -> list[tuple[RequestHandle, list[dict]]]:
        progress: dict[Ticket, list[int]] = {}
        ended: list[tuple[Ticket, str, GenerationOutput | None, BaseException | None]] = []
        finishing: list[Ticket] = []
        for g, tickets in self._join_units(admitted):
            for unit, done, error in self._join(g, tickets):
                if error is not None:
                    ended.extend((t, "failed", None, error) for t in unit)
                    continue
                for t in unit:
                    progress.setdefault(t, []).extend(done)
                    if t.finished_sampling:
                        finishing.append(t)
        with self.lock:
            groups = [g for g in self._groups.values() if g.active]
        for g in groups:
            try:
                advanced = g.step(self.runner, self.batch_invariant)
            except Exception as e:  # one pass for all: every request of this batch fails, other groups go on
                ended.extend((t, "failed", None, e) for t in g.fail_all(self.runner))
                g.reserved = False
                continue
            for t in advanced:
                progress.setdefault(t, []).append(t.steps_done)
                if t.finished_sampling:
                    finishing.append(t)
        finishing = [t for t in finishing if not t.handle.done]
        if finishing:
            ended.extend(self._outputs(finishing))
        return self._settle(progress, ended)

    def _output_alone(self, t: Ticket, t1: float):
        try:
            return t, "done", self._result(t, *self.runner.outputs([(t.handle.id, t.spec)])[0], t1), None
        except Exception as e:
            return t, "failed", None, e

    def _outputs(self, finishing: list[Ticket]) -> list[tuple[Ticket, str, GenerationOutput | None,
                                                            BaseException | None]]:
        """The results of the requests that finished this round. With ``batch_invariant`` each is decoded on its own
        (a decoder pass's arithmetic may depend on its batch size, and an image must not depend on its neighbours);
        otherwise together (``ModelRunner.outputs``: one decoder pass per image size), and if that fails each alone,
        so that one bad request fails alone."""
        t1 = time.perf_counter()
        try:  # with batch_invariant, one decoder pass per request: its images never depend on what finished with it
            made = self.runner.outputs([(t.handle.id, t.spec) for t in finishing], together=not self.batch_invariant)
        except Exception:
            return [self._output_alone(t, t1) for t in finishing]
        return [(t, "done", self._result(t, images, tokens, t1), None) for t, (images, tokens) in zip(finishing, made)]

    @staticmethod
    def _result(t: Ticket, images, tokens, t1: float) -> GenerationOutput:
        spec = t.spec
        timings = {"queued_s": t.started - t.submitted, "tokens_s": t.sampled - t.started}
        if spec.output_type != "tokens":
            timings["decode_s"] = time.perf_counter() - t1
        return GenerationOutput(images=images, tokens=tokens, height=spec.height, width=spec.width,
                                seed=spec.seed, timings=timings)

    def _settle(self, progress: dict[Ticket, list[int]],
                ended: list[tuple[Ticket, str, GenerationOutput | None, BaseException | None]]
                ) -> list[tuple[RequestHandle, list[dict]]]:
        """Apply the round to the handles (lock held) and collect the events to deliver."""
        events: dict[RequestHandle, list[dict]] = {}
        with self.cond:
            for t, steps in progress.items():
                if not t.handle.done:
                    events.setdefault(t.handle, []).extend(t.handle._advance(k) for k in steps)
            for t, status, output, error in ended:
                if output is None:
                    self.runner.forget(t.handle.id)
                event = t.handle._end(status, output, error)
                if event is None:  # cancelled meanwhile
                    continue
                self._live.pop(t.handle.id, None)
                self.stats_counter.record_end(status, t.images if status == "done" else 0)
                events.setdefault(t.handle, []).append(event)
            self._reap()
            self.cond.notify_all()
        return list(events.items())

    def fail_everything(self, error: BaseException) -> None:
        """After an unexpected error in the scheduler itself: every live request fails with it."""
        with self.cond:
            entries = list(self._live.values())
            self._live.clear()
            for g in self._groups.values():
                g.queue.clear()
        with self.device_lock, self.lock:
            for g in self._groups.values():
                if g.active:
                    g.fail_all(self.runner)
                    g.reserved = False
        for t, _ in entries:
            with self.lock:
                event = t.handle._end("failed", error=error)
                if event is not None:
                    self.stats_counter.record_end("failed", 0)
            if event is not None:
                t.handle._emit([event])

    # ---------------------------------------------------------------- reporting
    def stats(self) -> dict[str, Any]:
        with self.lock:
            queued = sum(len(g.queue) for g in self._groups.values())
            active = sum(len(g.active) for g in self._groups.values())
            snapshot = self.stats_counter.snapshot()
            return {"queue_length": queued, "active_requests": active, **snapshot,
                    "active_rows": sum(t.spec.rows for g in self._groups.values() for t in g.active),
                    "groups": sum(1 for g in self._groups.values() if g.queue or g.active),
                    "memory_reserved_bytes": self._reserved_bytes(), "memory_budget_bytes": self.memory_budget,
                    "max_batch": self.max_batch, "batch_invariant": self.batch_invariant,
                    "worker_running": self.worker.running}
