"""``bitdance-rt serve``: load a model (or write and load the tiny one with ``--tiny``), serve it with
``ImageServer`` until SIGINT or SIGTERM, then stop cleanly and exit 0.

On the first signal the server takes no new work (503), lets active requests finish for ``--drain-timeout``
seconds, cancels what is left, answers every open request, and stops the worker; a second signal cancels the
active requests at once.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..errors import InvalidRequestError
from .http_schema import parse_size
from .http_server import ImageServer, ServerConfig
from ..batching.limits import DEFAULT_MAX_BATCH, check_max_batch, parse_memory_budget

TINY_MAX_BATCH = 4  # two guided images at once

def _config(a: argparse.Namespace, tiny: bool) -> ServerConfig:
    for name in ("max_images", "max_queue"):
        if getattr(a, name) < 1:
            raise InvalidRequestError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}.")
    if a.preview_every is not None and a.preview_every < 0:
        raise InvalidRequestError(f"--preview-every must be >= 0, got {a.preview_every}.")
    default_size = None
    if a.default_size is not None:
        try:
            default_size = parse_size(a.default_size)
        except ValueError as e:
            raise InvalidRequestError(f"--default-size: {e}.") from None
    elif tiny:
        default_size = (512, 512)
    return ServerConfig(max_images=a.max_images, max_pending=a.max_queue, preview_every=a.preview_every,
                        default_size=default_size)


def _limits(a: argparse.Namespace) -> dict:
    """``Runtime.from_pretrained``'s serving limits, checked before any model is written or loaded. The tiny model
    on the CPU defaults to ``TINY_MAX_BATCH`` rows: a continuous batch computes all its rows every step."""
    default = TINY_MAX_BATCH if a.tiny else DEFAULT_MAX_BATCH
    limits = {"max_batch": default if a.max_batch is None else a.max_batch, "memory_budget": a.memory_budget}
    check_max_batch(limits["max_batch"])
    parse_memory_budget(limits["memory_budget"])
    return limits


def serve(a: argparse.Namespace) -> int:
    from ..runtime import Runtime

    if not logging.getLogger().handlers:  # one access-log line per request on stderr
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    if a.tiny == (a.model is not None):
        raise InvalidRequestError("give a model path, or --tiny for a tiny random-weight model; not both.")
    if not 0 <= a.port <= 65535:
        raise InvalidRequestError(f"--port must be in 0..65535, got {a.port}.")
    config = _config(a, a.tiny)
    limits = _limits(a)
    scratch = None
    try:
        if a.tiny:
            from ..tiny_models import write_tiny_t2i

            scratch = tempfile.mkdtemp(prefix="bitdance-tiny-")
            model = write_tiny_t2i(Path(scratch) / "tiny-t2i", parallel_num=64, seed=0)
            runtime = Runtime.from_pretrained(model, device=a.device or "cpu", dtype=a.dtype, backend=a.backend,
                                              quantization=getattr(a, "quantization", None),
                                              **limits)
        else:
            model = a.model
            runtime = Runtime.from_pretrained(model, device=a.device, dtype=a.dtype, backend=a.backend,
                                              quantization=getattr(a, "quantization", None),
                                              tokenizer_path=a.tokenizer, trust_pickle=a.trust_pickle, **limits)
        try:
            server = ImageServer(runtime, a.host, a.port, config)
        except OSError as e:
            raise InvalidRequestError(f"cannot listen on {a.host}:{a.port}: {e.strerror or e}; pick another "
                                      "--port or --host.") from None
        server.start()
        print(f"bitdance-rt serving {model} on {server.url} (page: {server.url}/ ; Ctrl-C stops)", flush=True)
        _serve_until_signal(server, a.drain_timeout)
        print("bitdance-rt: stopped", flush=True)
        return 0
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _serve_until_signal(server: ImageServer, drain_timeout: float) -> None:
    received: list[int] = []

    def on_signal(signum, frame) -> None:
        # Only a list append: a handler runs inside whatever the main thread was doing, so taking any lock here
        # (an Event's, a Thread's) could deadlock it. The main loop below acts on the signals.
        received.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not received:
            time.sleep(0.2)
        active = len(server.jobs.active())
        if drain_timeout > 0 and active:
            print(f"bitdance-rt: stopping; letting {active} active request(s) finish for up to {drain_timeout:g} s "
                  "(signal again to cancel them)", file=sys.stderr, flush=True)
        stopper = threading.Thread(target=server.shutdown, name="bitdance-shutdown",
                                   kwargs={"cancel_active": drain_timeout <= 0, "timeout": max(drain_timeout, 0.0)})
        stopper.start()
        seen = len(received)
        while stopper.is_alive():
            stopper.join(0.2)
            if len(received) > seen:  # another signal: cancel what is still running
                seen = len(received)
                _cancel_all(server)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _cancel_all(server: ImageServer) -> None:
    for job in server.jobs.active():
        job.handle.cancel()
