"""Previews for progress streams, rate-limited so that streaming costs the other requests little.

A preview decodes the tokens made so far (``RequestHandle.preview``), which is as much device work as the final
decode, and the runtime runs it under its device lock: every preview delays the next step of every request. So
previews share one budget, ``PreviewBudget``: preview work may take at most ``fraction`` of wall time (default 5 %),
whatever the number of streams. A preview is made only when the budget holds the expected cost of one (the
measured duration of recent previews, or of the final decodes before any preview ran); otherwise the progress
event goes out without one and the stream asks again at a later step. After an idle spell the budget holds at most
one preview, so a burst of streams cannot spend more than that at once. ``fraction >= 1`` turns the limit off.

``PreviewMaker`` makes previews one at a time on its own thread (never on the event loop), caches the latest per
request (streams of one request share it), and charges what each took.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from .images import as_image_list, encode_b64, shrunk

log = logging.getLogger("bitdance_rt.http")
EMA_WEIGHT = 0.3  # weight of the newest duration in the running estimate


class PreviewBudget:
    """A duty-cycle limit (see the module docstring). ``clock`` is injectable for tests."""

    def __init__(self, fraction: float, clock: Callable[[], float] = time.monotonic):
        if not fraction > 0:
            raise ValueError(f"preview budget fraction must be > 0, got {fraction!r}")
        self.fraction = float(fraction)
        self._clock = clock
        self._allowance = 0.0
        self._last = clock()
        self._estimate: float | None = None
        self._in_flight = False
        self._lock = threading.Lock()

    @property
    def unlimited(self) -> bool:
        return self.fraction >= 1.0

    @property
    def estimate(self) -> float | None:
        return self._estimate

    def _accrue(self) -> None:
        """Earn ``fraction`` of the time since the last call, up to one preview's worth (nothing before any
        estimate: then only a debt is paid back)."""
        now = self._clock()
        cap = self._estimate or 0.0
        if self._allowance < cap:
            self._allowance = min(cap, self._allowance + (now - self._last) * self.fraction)
        self._last = now

    def acquire(self) -> bool:
        """True (and the budget is reserved until ``settle``) when one preview may be made now."""
        if self.unlimited:
            return True
        with self._lock:
            self._accrue()
            if self._in_flight or self._allowance < (self._estimate or 0.0):
                return False
            self._in_flight = True
            return True

    def settle(self, seconds: float) -> None:
        """A granted preview took ``seconds``: charge it and update the estimate."""
        with self._lock:
            self._in_flight = False
            if self.unlimited:
                return
            self._accrue()
            self._allowance -= seconds
            self._learn(seconds)

    def hint(self, seconds: float) -> None:
        """The measured duration of comparable work (a request's final decode), used until previews are measured."""
        with self._lock:
            if self._estimate is None and seconds > 0:
                self._learn(seconds)

    def _learn(self, seconds: float) -> None:
        self._estimate = seconds if self._estimate is None else \
            (1 - EMA_WEIGHT) * self._estimate + EMA_WEIGHT * seconds


class PreviewMaker:
    """Makes previews on one thread under a ``PreviewBudget``; ``on_made(seconds)`` reports each (metrics)."""

    def __init__(self, budget: PreviewBudget, on_made: Callable[[float], None] | None = None):
        self.budget = budget
        self._on_made = on_made
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bitdance-preview")

    async def b64(self, job, step: int, output_format: str, max_side: int | None) -> str | None:
        """Base64 of the first image's preview at ``step`` or later, shrunk to ``max_side`` (None: full size) and
        encoded as ``output_format``; None when the budget does not allow one now or it failed."""
        if not self.budget.acquire():
            return None
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._make, job, step, output_format, max_side)
        except Exception:  # noqa: BLE001 - a missing preview is not an error of the request
            log.exception("preview of %s failed", job.id)
            return None

    def _make(self, job, step: int, output_format: str, max_side: int | None) -> str:
        t0 = time.perf_counter()
        try:
            image = job.preview(step, _first_preview_image)
            if max_side is not None:
                image = shrunk(image, max_side)
            return encode_b64(image, output_format)
        finally:
            seconds = time.perf_counter() - t0
            self.budget.settle(seconds)
            if self._on_made is not None:
                self._on_made(seconds)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def _first_preview_image(handle) -> Any:
    return as_image_list(handle.preview(output_type="pil"))[0]
