"""``bitdance-rt serve [MODEL | --tiny]``: load a model (or write and load the tiny one with ``--tiny``), serve it over
HTTP (``bitdance_rt.http``; needs the ``serve`` extra) until SIGINT or SIGTERM, then stop cleanly and exit 0.

On the first signal the server takes no new work (503), lets active requests finish for ``--drain-timeout``
seconds, cancels what is left, answers every open request and stops the worker; a second signal cancels the active
requests at once. Without the extra installed, it prints a one-line hint and exits 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from .model_options import add_model_arguments, serving_runtime

NAME = "serve"
HELP = "serve a model over HTTP: OpenAI-style images API, progress events, metrics, web page"
SERVE_EXTRA = ("fastapi", "uvicorn", "prometheus_client", "sse_starlette", "pydantic")
TINY_MAX_BATCH = 4  # two guided images at once
TINY_SIZE = (512, 512)


def add_arguments(s: argparse.ArgumentParser) -> None:
    add_model_arguments(s, model_required=False)
    s.add_argument("--tiny", action="store_true",
                   help="write a tiny random-weight text-to-image model and serve it on the CPU (a quick look)")
    s.add_argument("--served-model-name", help="the model's id in /v1/models (default: the model's file name)")
    net = s.add_argument_group("network and security")
    net.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    net.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    net.add_argument("--api-key", default=None,
                     help="require 'Authorization: Bearer KEY' on /v1/ requests (default: $BITDANCE_API_KEY)")
    net.add_argument("--allowed-origins", action="append", default=[], metavar="ORIGINS",
                     help="origins allowed by CORS, comma-separated or repeated (e.g. https://app.example.com; "
                          "'*' for any); default none")
    net.add_argument("--allowed-hosts", action="append", default=[], metavar="HOSTS",
                     help="Host header values to answer, comma-separated or repeated ('*.example.com', '*'); "
                          "default: localhost, 127.0.0.1 and ::1 on loopback, any host otherwise")
    net.add_argument("--limit-concurrency", type=int, default=512,
                     help="HTTP requests in progress at once (event streams included); more get 503 (default 512)")
    net.add_argument("--max-connections", type=int, default=2048,
                     help="open connections; more are answered 503 and closed (default 2048)")
    net.add_argument("--timeout-keep-alive", type=float, default=5.0,
                     help="seconds an idle kept-alive connection stays open (default 5)")
    net.add_argument("--receive-timeout", type=float, default=30.0,
                     help="seconds a request's headers and body may take to arrive (default 30)")
    work = s.add_argument_group("work")
    work.add_argument("--max-batch", type=int,
                      help="rows per continuous batch (an image is 2 rows when guided; default: the runtime's)")
    work.add_argument("--memory-budget", help="bytes the serving batches may use, e.g. 20GiB (default: no limit)")
    work.add_argument("--max-images", type=int, default=4, help="most images per request (n), default 4")
    work.add_argument("--max-queue", type=int, default=64,
                      help="requests queued or running; more get 429 with Retry-After (default 64)")
    work.add_argument("--request-timeout", type=float, default=0.0,
                      help="default deadline of a generation in seconds, after which it is cancelled (504); a "
                           "request's own 'timeout' may be shorter. 0: none (default)")
    work.add_argument("--preview-every", type=int,
                      help="AR steps between previews in progress streams (0: none; default: about 8 per request)")
    work.add_argument("--preview-budget", type=float, default=0.05,
                      help="share of wall time previews may take, all streams together (default 0.05; 1: no limit)")
    work.add_argument("--default-size", help="WIDTHxHEIGHT for requests without a size (default: the model's)")
    work.add_argument("--drain-timeout", type=float, default=60.0,
                      help="on SIGINT/SIGTERM, seconds active requests may take to finish before they are "
                           "cancelled (0: cancel at once; a second signal cancels at once too)")


def _missing_extra() -> list[str]:
    missing = []
    for name in SERVE_EXTRA:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def _split(values: list[str]) -> tuple[str, ...]:
    return tuple(v.strip() for item in values for v in item.split(",") if v.strip())


def _config(a: argparse.Namespace, model_name: str):
    """The ``ServerConfig`` of the options, checked before any model is written or loaded."""
    from ..errors import InvalidRequestError
    from ..http.schema import parse_size
    from ..http.server import ServerConfig

    def positive(name: str, value, minimum=1) -> None:
        if value < minimum:
            raise InvalidRequestError(f"--{name} must be >= {minimum}, got {value}.")

    for name in ("max_images", "max_queue", "limit_concurrency", "max_connections"):
        positive(name.replace("_", "-"), getattr(a, name))
    for name in ("timeout_keep_alive", "receive_timeout", "preview_budget"):
        if not getattr(a, name) > 0:
            raise InvalidRequestError(f"--{name.replace('_', '-')} must be > 0, got {getattr(a, name)}.")
    if a.preview_every is not None:
        positive("preview-every", a.preview_every, 0)
    if a.request_timeout < 0:
        raise InvalidRequestError(f"--request-timeout must be >= 0 (0: none), got {a.request_timeout}.")
    default_size = TINY_SIZE if a.tiny else None
    if a.default_size is not None:
        try:
            default_size = parse_size(a.default_size)
        except ValueError as e:
            raise InvalidRequestError(f"--default-size: {e}.") from None
    return ServerConfig(max_images=a.max_images, max_pending=a.max_queue, preview_every=a.preview_every,
                        preview_budget=a.preview_budget, default_size=default_size,
                        receive_timeout_s=a.receive_timeout, keep_alive_s=a.timeout_keep_alive,
                        request_timeout_s=a.request_timeout or None, limit_concurrency=a.limit_concurrency,
                        max_connections=a.max_connections, api_key=a.api_key or os.environ.get("BITDANCE_API_KEY"),
                        allowed_origins=_split(a.allowed_origins), allowed_hosts=_split(a.allowed_hosts) or None,
                        model_name=model_name)


def _limits(a: argparse.Namespace) -> dict:
    """``Runtime.from_pretrained``'s serving limits. The tiny model on the CPU defaults to ``TINY_MAX_BATCH`` rows:
    a continuous batch computes all its rows every step."""
    from ..batching.limits import DEFAULT_MAX_BATCH, check_max_batch, parse_memory_budget

    default = TINY_MAX_BATCH if a.tiny else DEFAULT_MAX_BATCH
    limits = {"max_batch": default if a.max_batch is None else a.max_batch, "memory_budget": a.memory_budget}
    check_max_batch(limits["max_batch"])
    parse_memory_budget(limits["memory_budget"])
    return limits


def run(a: argparse.Namespace) -> int:
    missing = _missing_extra()
    if missing:
        print(f"bitdance-rt serve needs the 'serve' extra (missing: {', '.join(missing)}): "
              "pip install 'bitdance-rt[serve]'", file=sys.stderr)
        return 2
    from ..errors import InvalidRequestError

    if a.tiny == (a.model is not None):
        raise InvalidRequestError("give a model path, or --tiny for a tiny random-weight model; not both.")
    if not 0 <= a.port <= 65535:
        raise InvalidRequestError(f"--port must be in 0..65535, got {a.port}.")
    model_name = a.served_model_name or ("bitdance-tiny-t2i" if a.tiny else Path(a.model).stem)
    config = _config(a, model_name)
    limits = _limits(a)
    if not logging.getLogger().handlers:  # the server's log and one access line per request on stderr
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return _serve(a, config, limits)


def _serve(a: argparse.Namespace, config, limits: dict) -> int:
    from ..errors import InvalidRequestError
    from ..http.server import ImageServer

    with serving_runtime(a, **limits) as (runtime, model):
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


def _serve_until_signal(server, drain_timeout: float) -> None:
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
                server.cancel_all()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
