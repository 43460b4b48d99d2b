"""``Worker``: a background thread that owns the device and runs ``Scheduler.step`` while work exists.

It sleeps on the scheduler's condition when there is nothing to do (``submit`` and ``cancel`` notify it).
``stop(cancel=False)`` lets the queued and running requests finish first, then ends the thread; ``cancel=True``
cancels them and ends it after the current round. An unexpected error in the scheduler itself is logged and fails
the requests alive then; the thread goes on serving later ones.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)
IDLE_WAIT_S = 0.05  # re-check after a round that found nothing to run although work was queued


class Worker:
    def __init__(self, scheduler):
        self._scheduler = scheduler
        self._thread: threading.Thread | None = None
        self._stop = False

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        s = self._scheduler
        with s.cond:
            if self.running:
                return
            self._stop = False
            self._thread = threading.Thread(target=self._run, name=f"bitdance-{s.name}-worker", daemon=True)
            self._thread.start()

    def stop(self, cancel: bool = False, timeout: float | None = None) -> bool:
        """End the thread (see the module docstring); returns whether it ended within ``timeout``."""
        s = self._scheduler
        if cancel:
            s.cancel_all()
        with s.cond:
            self._stop = True
            s.cond.notify_all()
            thread = self._thread
        if thread is None:
            return True
        if thread is threading.current_thread():
            return False  # asked from a listener on the worker itself: it stops after this round
        thread.join(timeout)
        if thread.is_alive():
            return False
        with s.cond:
            if self._thread is thread:
                self._thread = None
        return True

    def _run(self) -> None:
        s = self._scheduler
        while True:
            with s.cond:
                while not self._stop and not s.has_work():
                    s.cond.wait()
                if self._stop and not s.has_work():
                    return
            try:
                did = s.step()
            except Exception as e:  # a bug in the scheduler: fail what is alive, keep serving
                log.exception("the serving worker's step failed; failing the live requests")
                s.fail_everything(e)
                did = True
            if not did:
                with s.cond:
                    s.cond.wait(IDLE_WAIT_S)
