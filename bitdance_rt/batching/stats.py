"""``ServingStats``: counters and recent rates for ``Runtime.stats()`` (the HTTP server's ``/metrics``).

Completed images and step latencies are kept for the last ``window_s`` seconds: ``images_per_second`` is the
images completed in the window divided by the window's span (from its oldest entry, or from the start when the
scheduler is younger than the window); ``step_latency_s`` is the latest scheduler round's wall time (every active
group's AR step, joins and image decoding included) and ``mean_step_latency_s`` the mean over the window;
``rounds`` counts the rounds that did work since the start.
"""

from __future__ import annotations

import time
from collections import deque

WINDOW_S = 60.0


class ServingStats:
    def __init__(self, window_s: float = WINDOW_S):
        self.window_s = window_s
        self.started = time.perf_counter()
        self.images_completed = 0
        self.requests = {"done": 0, "cancelled": 0, "failed": 0}
        self._images: deque[tuple[float, int]] = deque()
        self._steps: deque[tuple[float, float]] = deque()
        self.last_step_s: float | None = None
        self.rounds = 0

    def _trim(self, now: float) -> None:
        for q in (self._images, self._steps):
            while q and q[0][0] < now - self.window_s:
                q.popleft()

    def record_step(self, seconds: float) -> None:
        now = time.perf_counter()
        self.last_step_s = seconds
        self.rounds += 1
        self._steps.append((now, seconds))
        self._trim(now)

    def record_end(self, status: str, images: int) -> None:
        self.requests[status] += 1
        if status == "done":
            self.images_completed += images
            self._images.append((time.perf_counter(), images))

    def snapshot(self) -> dict:
        now = time.perf_counter()
        self._trim(now)
        span = min(self.window_s, now - self.started)
        recent = sum(n for _, n in self._images)
        steps = [s for _, s in self._steps]
        return {"images_completed": self.images_completed,
                "images_per_second": recent / span if span > 0 else 0.0,
                "step_latency_s": self.last_step_s,
                "mean_step_latency_s": sum(steps) / len(steps) if steps else None, "rounds": self.rounds,
                "requests_done": self.requests["done"], "requests_cancelled": self.requests["cancelled"],
                "requests_failed": self.requests["failed"], "window_s": self.window_s}
