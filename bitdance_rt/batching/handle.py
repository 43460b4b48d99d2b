"""``RequestHandle``: a submitted request as its caller sees it, from any thread.

``status`` is ``"queued"`` (waiting for slots or memory), ``"running"`` (prefilled and stepping), or one of the
terminal ``"done"``, ``"cancelled"``, ``"failed"``; ``done`` is true in a terminal state. ``progress`` is
``(AR steps done, AR steps in all)``. ``result(timeout)`` waits and returns the ``GenerationOutput`` that
``Runtime.generate`` would (images as asked, int8 tokens on the CPU, the seed, timings ``queued_s``, ``tokens_s``,
``decode_s``), or raises ``RequestCancelled`` / ``RequestFailed`` / ``TimeoutError``. ``preview()`` decodes the
tokens made so far (see ``preview.py``). ``add_listener(fn)`` registers ``fn(event)``, called from the stepping
thread with ``{"type": "progress", "step": k, "total": n}`` after every AR step and one terminal event
``{"type": "done"}``, ``{"type": "cancelled"}`` or ``{"type": "failed", "error": message}`` (a listener added
after the end gets the terminal event at once; a listener that raises is logged and kept out of the stepping).

State changes happen under the scheduler's lock; listeners are called outside it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

import torch

from ..errors import BitDanceError
from ..outputs import GenerationOutput
from ..request import RequestSpec

TERMINAL = ("done", "cancelled", "failed")
Listener = Callable[[dict], None]
log = logging.getLogger(__name__)


class RequestCancelled(BitDanceError):
    """``result()`` of a request that was cancelled before it finished."""


class RequestFailed(BitDanceError):
    """``result()`` of a request whose work raised; the original exception is the ``__cause__``."""


class RequestHandle:
    def __init__(self, request_id: str, spec: RequestSpec, scheduler):
        self.id = request_id
        self.spec = spec
        self._scheduler = scheduler
        self._lock = scheduler.lock
        self._status = "queued"
        self._step = 0
        self._output: GenerationOutput | None = None
        self._error: BaseException | None = None
        self._listeners: list[Listener] = []
        self._delivery = threading.RLock()  # events reach listeners in order, nothing after the terminal one
        self._closed = False  # the terminal event has been delivered
        self._finished = threading.Event()

    def __repr__(self) -> str:
        return f"RequestHandle({self.id!r}, status={self._status!r}, progress={self.progress})"

    # ---------------------------------------------------------------- what callers read
    @property
    def status(self) -> str:
        return self._status

    @property
    def done(self) -> bool:
        return self._status in TERMINAL

    @property
    def progress(self) -> tuple[int, int]:
        return self._step, self.spec.num_ar

    @property
    def seed(self) -> int | None:
        return self.spec.seed

    @property
    def tokens(self) -> torch.Tensor | None:
        """The tokens made so far (int8 ``[images, h·w, C]``, 0 where not yet sampled; on the device while the
        request runs, the result's on the CPU after it is done; None before it joins)."""
        final = self.final_tokens()
        return final if final is not None else self._scheduler.tokens_of(self)

    def final_tokens(self) -> torch.Tensor | None:
        """The result's tokens once the request is done, else None."""
        return self._output.tokens if self._status == "done" and self._output is not None else None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the request ends (True) or ``timeout`` seconds pass (False)."""
        return self._finished.wait(timeout)

    def result(self, timeout: float | None = None) -> GenerationOutput:
        if not self._finished.wait(timeout):
            raise TimeoutError(f"request {self.id} has not finished after {timeout} s (status {self._status!r}, "
                               f"AR step {self._step} of {self.spec.num_ar}); wait longer or cancel() it.")
        if self._status == "cancelled":
            raise RequestCancelled(f"request {self.id} was cancelled at AR step {self._step} of "
                                   f"{self.spec.num_ar}; it has no result.")
        if self._status == "failed":
            raise RequestFailed(f"request {self.id} failed: {type(self._error).__name__}: {self._error}") \
                from self._error
        return self._output

    def raise_if_failed(self) -> None:
        """Re-raise the original exception of a failed request (``result()`` wraps it in ``RequestFailed``)."""
        if self._status == "failed":
            raise self._error

    def cancel(self) -> bool:
        """Stop the request: a queued one leaves the queue, a running one frees its slots at the next step
        boundary. Returns False when it had already ended."""
        return self._scheduler.cancel(self)

    def preview(self, output_type: str = "pil") -> Any:
        """The image(s) of the tokens made so far, the rest filled neutrally (see ``preview.py``)."""
        return self._scheduler.preview(self, output_type)

    def add_listener(self, fn: Listener) -> None:
        if not callable(fn):
            raise TypeError(f"add_listener takes a callable fn(event), got {type(fn).__name__}")
        with self._delivery:
            if not self._closed:
                with self._lock:
                    self._listeners.append(fn)
                return
            with self._lock:
                event = self._terminal_event()
        _call(fn, event, self.id)

    # ---------------------------------------------------------------- driven by the scheduler (lock held)
    def _set_running(self) -> None:
        self._status = "running"

    def _advance(self, steps_done: int) -> dict:
        self._step = steps_done
        return {"type": "progress", "step": steps_done, "total": self.spec.num_ar}

    def _end(self, status: str, output: GenerationOutput | None = None,
             error: BaseException | None = None) -> dict | None:
        """Enter a terminal state; returns its event, or None when the request had already ended."""
        if self.done:
            return None
        self._status, self._output, self._error = status, output, error
        self._finished.set()
        return self._terminal_event()

    def _terminal_event(self) -> dict:
        if self._status == "failed":
            return {"type": "failed", "error": f"{type(self._error).__name__}: {self._error}"}
        return {"type": self._status}

    def _emit(self, events: list[dict]) -> None:
        """Deliver events in order (the scheduler's lock NOT held); nothing is delivered after a terminal event,
        whichever thread delivered it, and the listeners are dropped then."""
        with self._delivery:
            for event in events:
                if self._closed:
                    return
                with self._lock:
                    listeners = list(self._listeners)
                for fn in listeners:
                    _call(fn, event, self.id)
                if event["type"] in TERMINAL:
                    self._closed = True
                    with self._lock:
                        self._listeners.clear()


def _call(fn: Listener, event: dict, request_id: str) -> None:
    try:
        fn(event)
    except Exception:  # a listener's bug must not stop the stepping thread
        log.exception("listener of request %s raised on %s", request_id, event)
