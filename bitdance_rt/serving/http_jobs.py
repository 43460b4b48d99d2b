"""The HTTP server's record of submitted requests: ``Job`` wraps a runtime ``RequestHandle`` with a public id,
fans the handle's events out to any number of progress streams, caches the latest preview and the final response
body, and reports its outcome once; ``JobRegistry`` finds jobs by id and forgets finished ones after a while.

A handle's listener is called from the runtime's stepping thread, so ``Job.on_event`` only records and enqueues;
previews and PNG encoding happen in the HTTP threads that want them.
"""

from __future__ import annotations

import queue
import secrets
import threading
import time
from collections import OrderedDict
from typing import Any, Callable

from .http_images import as_image_list, preview_b64

TERMINAL = ("done", "failed", "cancelled")


class Job:
    def __init__(self, handle, *, n: int, size: str, on_finish: Callable[["Job", str], None]):
        self.id = "gen-" + secrets.token_hex(8)
        self.handle = handle
        self.n = n
        self.size = size
        self.created = int(time.time())
        self.finished_at: float | None = None
        self.outcome: str | None = None
        self.error: str | None = None
        self._on_finish = on_finish
        self._lock = threading.Lock()
        self._subscribers: list[queue.SimpleQueue] = []
        self._preview: tuple[int, str] | None = None
        self._preview_lock = threading.Lock()
        self.final_body: dict[str, Any] | None = None
        self.final_lock = threading.Lock()

    # ---------------------------------------------------------------- events
    def on_event(self, event: dict[str, Any]) -> None:
        """The handle's listener (runtime thread): forward to subscribers; note a terminal event."""
        kind = event.get("type")
        if kind == "failed" and event.get("error") is not None:
            self.error = str(event["error"])
        with self._lock:
            subscribers = list(self._subscribers)
        for q in subscribers:
            q.put(event)
        if kind in TERMINAL:
            self.mark_finished(kind)

    def mark_finished(self, outcome: str) -> None:
        """Idempotent: the first caller records the outcome and tells the server."""
        with self._lock:
            if self.outcome is not None:
                return
            self.outcome = outcome
            self.finished_at = time.monotonic()
        self._on_finish(self, outcome)

    def subscribe(self) -> queue.SimpleQueue:
        q: queue.SimpleQueue = queue.SimpleQueue()
        with self._lock:
            self._subscribers.append(q)
        return q

    def unsubscribe(self, q: queue.SimpleQueue) -> None:
        with self._lock:
            if q in self._subscribers:
                self._subscribers.remove(q)

    # ---------------------------------------------------------------- state
    @property
    def status(self) -> str:
        status = self.handle.status
        if status in TERMINAL:
            self.mark_finished(status)
        return status

    def progress(self) -> tuple[int, int]:
        step, total = self.handle.progress
        return int(step), int(total)

    def preview(self, step: int, max_side: int) -> str | None:
        """Base64 PNG of the first image's preview, made at most once per step however many streams ask."""
        with self._preview_lock:
            if self._preview is not None and self._preview[0] >= step:
                return self._preview[1]
            images = as_image_list(self.handle.preview(output_type="pil"))
            encoded = preview_b64(images[0], max_side)
            self._preview = (step, encoded)
            return encoded


class JobRegistry:
    """Jobs by id, in submission order. Finished jobs are dropped ``ttl_s`` after they finished, or earlier when
    more than ``max_finished`` are kept (each holds its images); active jobs are never dropped."""

    def __init__(self, ttl_s: float, max_finished: int):
        self.ttl_s = ttl_s
        self.max_finished = max_finished
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, job: Job) -> None:
        with self._lock:
            self._jobs[job.id] = job
            self._evict()

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
        return [j for j in jobs if j.status not in TERMINAL]

    def _evict(self) -> None:
        now = time.monotonic()
        finished = [j for j in self._jobs.values() if j.finished_at is not None]
        excess = len(finished) - self.max_finished
        for j in finished:
            if excess > 0 or now - j.finished_at > self.ttl_s:
                del self._jobs[j.id]
                excess -= 1
