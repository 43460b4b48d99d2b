"""The server's record of submitted requests.

``Job`` wraps a runtime ``RequestHandle`` with a public id: it fans the handle's events out to the event loop's
subscribers (progress streams, waiting synchronous requests), remembers why it was cancelled (a ``DELETE``, the
client leaving, its deadline, the shutdown), caches its latest preview, and reports its end once. The handle's
listener runs on the runtime's stepping thread, so ``Job.on_event`` only records and hands the event to the loop
(``call_soon_threadsafe``); subscribers live on the loop.

``JobRegistry`` finds jobs by id; finished asynchronous ones are dropped ``ttl_s`` after they ended (a periodic
sweep, not only when a new job comes) or earlier when more than ``max_finished`` are kept; active ones never.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections import OrderedDict
from typing import Any, Callable

TERMINAL = ("done", "failed", "cancelled")
CANCEL_REASONS = ("delete", "disconnect", "deadline", "shutdown")


class Job:
    def __init__(self, handle, params, loop: asyncio.AbstractEventLoop, on_end: Callable[["Job"], None]):
        self.id = "gen-" + secrets.token_hex(8)
        self.handle = handle
        self.params = params
        self.created = int(time.time())
        self.submitted = time.monotonic()
        self.finished_at: float | None = None
        self.outcome: str | None = None
        self.cancel_reason: str | None = None
        self.deadline_s: float | None = None  # seconds from submission after which it is cancelled
        self.error: str | None = None  # the runtime's account of a failure: for the server log, never for clients
        self.ended = asyncio.Event()  # set on the loop when the terminal event arrives there
        self._loop = loop
        self._on_end = on_end
        self._lock = threading.Lock()
        self._subscribers: list[asyncio.Queue] = []
        self._deadline: asyncio.TimerHandle | None = None
        self._preview: tuple[int, Any] | None = None
        self._preview_lock = threading.Lock()
        self.final: tuple[int, dict[str, Any]] | None = None  # (status, body) once built (results.py)
        self.final_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Job({self.id!r}, status={self.status!r})"

    # ---------------------------------------------------------------- runtime thread
    def on_event(self, event: dict[str, Any]) -> None:
        """The handle's listener: record a terminal event, then pass the event to the loop."""
        kind = event.get("type")
        if kind == "failed":
            self.error = str(event.get("error"))
        if kind in TERMINAL:
            self._mark_finished(kind)
        try:
            self._loop.call_soon_threadsafe(self._deliver, event)
        except RuntimeError:  # the loop is closed: the server has stopped, nobody listens
            pass

    def _mark_finished(self, outcome: str) -> None:
        """Idempotent: the first caller records the outcome and tells the server."""
        with self._lock:
            if self.outcome is not None:
                return
            self.outcome = outcome
            self.finished_at = time.monotonic()
        self._on_end(self)

    # ---------------------------------------------------------------- event loop
    def _deliver(self, event: dict[str, Any]) -> None:
        for q in list(self._subscribers):
            q.put_nowait(event)
        if event.get("type") in TERMINAL:
            self.ended.set()
            if self._deadline is not None:
                self._deadline.cancel()

    def subscribe(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue()
        self._subscribers.append(q)
        if self.handle.done:  # ended before this subscriber came: it still sees the end
            q.put_nowait({"type": self.handle.status})
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        if q in self._subscribers:
            self._subscribers.remove(q)

    def set_deadline(self, seconds: float) -> None:
        """Cancel the request (reason ``deadline``) if it has not ended ``seconds`` from now."""
        self.deadline_s = seconds
        if not self.handle.done:
            self._deadline = self._loop.call_later(seconds, self.cancel, "deadline")

    # ---------------------------------------------------------------- any thread
    def cancel(self, reason: str) -> bool:
        """Cancel the request, remembering why (the first reason wins); False if it had already ended."""
        if reason not in CANCEL_REASONS:
            raise ValueError(f"cancel reason {reason!r}; one of {', '.join(CANCEL_REASONS)}")
        with self._lock:
            if self.cancel_reason is None and self.outcome is None:
                self.cancel_reason = reason
        return self.handle.cancel()

    @property
    def status(self) -> str:
        status = self.handle.status
        if status in TERMINAL:
            self._mark_finished(status)
        return status

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def progress(self) -> tuple[int, int]:
        step, total = self.handle.progress
        return int(step), int(total)

    def preview(self, step: int, make: Callable[[Any], Any]) -> Any:
        """``make(handle)`` (a preview of the tokens so far) at most once per step however many streams ask: a
        cached preview made at ``step`` or later is returned as it is."""
        with self._preview_lock:
            if self._preview is not None and self._preview[0] >= step:
                return self._preview[1]
            made = make(self.handle)
            self._preview = (step, made)
            return made


class JobRegistry:
    """Jobs by id, in submission order (see the module docstring)."""

    def __init__(self, ttl_s: float, max_finished: int):
        self.ttl_s = ttl_s
        self.max_finished = max_finished
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, job: Job) -> None:
        with self._lock:
            self._jobs[job.id] = job
        self.evict()

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def forget(self, job_id: str) -> None:
        """Drop a job whose client has its answer (synchronous and streamed requests), with its images."""
        with self._lock:
            self._jobs.pop(job_id, None)

    def active(self) -> list[Job]:
        with self._lock:
            jobs = list(self._jobs.values())
        return [j for j in jobs if not j.done]

    def __len__(self) -> int:
        with self._lock:
            return len(self._jobs)

    def evict(self, now: float | None = None) -> int:
        """Drop finished jobs past their time (and the oldest beyond ``max_finished``); returns how many."""
        now = time.monotonic() if now is None else now
        with self._lock:
            finished = [j for j in self._jobs.values() if j.finished_at is not None]
            excess = len(finished) - self.max_finished
            dropped = 0
            for j in finished:
                if excess > 0 or now - j.finished_at > self.ttl_s:
                    del self._jobs[j.id]
                    excess -= 1
                    dropped += 1
        return dropped
