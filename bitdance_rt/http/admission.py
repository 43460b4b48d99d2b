"""Admission under load: how fast the queue drains, and the ``Retry-After`` of a request refused because the queue
is full (429, as TGI answers when overloaded).

``DrainMeter`` records when requests end (done, failed or cancelled: each frees a place in the queue) and measures
the rate over the last ``window_s`` seconds. ``retry_after_s(pending)`` is the time the requests ahead take to
drain at that rate, ``ceil(pending / rate)``, clamped to ``[1, max_s]``; before any request has ended the rate is
unknown and ``fallback_s`` is used.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque


class DrainMeter:
    def __init__(self, window_s: float = 120.0, fallback_s: int = 5, max_s: int = 600):
        self.window_s = window_s
        self.fallback_s = fallback_s
        self.max_s = max_s
        self._ends: deque[float] = deque()
        self._started = time.monotonic()
        self._lock = threading.Lock()

    def record_end(self, at: float | None = None) -> None:
        with self._lock:
            self._ends.append(time.monotonic() if at is None else at)

    def rate(self, now: float | None = None) -> float | None:
        """Requests ended per second over the window (from the first end in it, or the meter's start when that
        is later than the window's start); None when none ended in the window."""
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._ends and self._ends[0] < now - self.window_s:
                self._ends.popleft()
            if not self._ends:
                return None
            span = max(now - max(self._started, now - self.window_s), 1e-3)
            return len(self._ends) / span

    def retry_after_s(self, pending: int, now: float | None = None) -> int:
        rate = self.rate(now)
        if rate is None:
            return self.fallback_s
        return int(min(self.max_s, max(1, math.ceil(pending / rate))))
