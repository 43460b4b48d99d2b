"""``ImageServer``: a ``Runtime`` behind HTTP (FastAPI on uvicorn, on its own event-loop thread), and its settings.

``ImageServer(runtime, host, port, config)`` binds the socket at once (port 0 picks a free one; a bind error is an
``OSError`` here). ``start()`` starts the runtime's worker and the server thread. ``shutdown(cancel_active, timeout)``
refuses new work (503), cancels the active requests or lets them finish for ``timeout`` seconds (then cancels
what is left), waits until every open request is answered, stops uvicorn and the worker.

Requests are admitted while fewer than ``max_pending`` are queued or running; beyond that a 429 with
``Retry-After`` from the measured drain rate (``admission.py``). A request's deadline (its ``timeout`` field, or
``request_timeout_s``, whichever is shorter) cancels it with a 504. Finished asynchronous requests are swept
``finished_ttl_s`` after they ended. Endpoints: ``routes.py``; the layers around them: ``app.py``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import anyio
import uvicorn

from ..errors import BitDanceError, InvalidRequestError
from .admission import DrainMeter
from .app import build_app
from .errors import ApiError, from_invalid_request
from .jobs import Job, JobRegistry
from .metrics import ServerMetrics
from .previews import PreviewBudget, PreviewMaker
from .protocol import guarded_protocol
from .schema import GenerationParams, MAX_PARTIAL_IMAGES, OUTPUT_FORMATS, model_limits, size_name
from .security import default_allowed_hosts, exposure_warning

log = logging.getLogger("bitdance_rt.http")

PAGE = Path(__file__).parent / "web" / "index.html"


@dataclass
class ServerConfig:
    """Per-request caps, limits and security settings (the ``bitdance-rt serve`` options; README.md, "Serving").

    ``preview_every``: AR steps between previews in progress streams (None: about 8 per request; 0: none);
    ``preview_budget``: the share of wall time previews may take (>= 1: no limit). ``receive_timeout_s``: a
    request's headers and body must arrive within it. ``request_timeout_s``: the default deadline of a generation
    (None: none). ``limit_concurrency``: requests in progress at once (more get 503); ``max_connections``: open
    connections. ``allowed_hosts``: None for the default (loopback names on a loopback server, else any)."""
    max_images: int = 4
    max_sampling_steps: int = 1000
    max_prompt_chars: int = 4000
    max_body_bytes: int = 64 * 1024
    max_header_bytes: int = 16 * 1024
    max_pending: int = 64
    preview_every: int | None = None
    preview_max_side: int = 256
    preview_budget: float = 0.05
    heartbeat_s: float = 15.0
    finished_ttl_s: float = 600.0
    max_finished: int = 64
    default_size: tuple[int, int] | None = None
    receive_timeout_s: float = 30.0
    keep_alive_s: float = 5.0
    request_timeout_s: float | None = None
    limit_concurrency: int | None = 512
    max_connections: int = 2048
    api_key: str | None = None
    allowed_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] | None = None
    model_name: str | None = None
    worker_threads: int = 4
    retry_after_fallback_s: int = 5
    graceful_timeout_s: float = 5.0


class ImageServer:
    """See the module docstring. Usable as a context manager (start, then shutdown cancelling what is left)."""

    def __init__(self, runtime, host: str = "127.0.0.1", port: int = 8000, config: ServerConfig | None = None):
        self.runtime = runtime
        self.config = c = config or ServerConfig()
        if c.max_images < 1 or c.max_pending < 1:
            raise InvalidRequestError(f"max_images ({c.max_images}) and max_pending ({c.max_pending}) must be >= 1.")
        self.limits = model_limits(runtime, max_images=c.max_images, max_sampling_steps=c.max_sampling_steps,
                                   max_prompt_chars=c.max_prompt_chars, default_size=c.default_size)
        self.host = host
        self.model_name = c.model_name or f"bitdance-{self.limits.family}"
        self.started_at = int(time.time())
        self.allowed_hosts = tuple(c.allowed_hosts) if c.allowed_hosts else default_allowed_hosts(host)
        self.jobs = JobRegistry(c.finished_ttl_s, c.max_finished)
        self.drain = DrainMeter(fallback_s=c.retry_after_fallback_s)
        self.metrics = ServerMetrics(lambda: self.runtime.stats(), lambda: self.stopping,
                                     lambda: len(self.jobs.active()), lambda: self.connections)
        self.previews = PreviewMaker(PreviewBudget(c.preview_budget), self.metrics.preview_made)
        self.page = PAGE.read_bytes() if PAGE.is_file() else None
        self.info = self._model_info()
        self._admit = threading.Lock()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._threads = anyio.CapacityLimiter(c.worker_threads)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._uvicorn: uvicorn.Server | None = None
        self._sock = _bind(host, port)
        self.app = build_app(self)
        warning = exposure_warning(host, c.api_key)
        if warning:
            log.warning(warning)

    # ---------------------------------------------------------------- lifecycle
    @property
    def port(self) -> int:
        return self._sock.getsockname()[1]

    @property
    def url(self) -> str:
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"http://{host}:{self.port}"

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def connections(self) -> int:
        """Open HTTP connections."""
        return 0 if self._uvicorn is None else len(self._uvicorn.server_state.connections)

    @property
    def in_flight(self) -> int:
        """HTTP requests in progress (event streams included)."""
        return self.app.in_flight

    def start(self) -> "ImageServer":
        c = self.config
        protocol = guarded_protocol(receive_timeout=c.receive_timeout_s, max_connections=c.max_connections,
                                    on_answer=lambda status: self.metrics.request(status, "other", None))
        config = uvicorn.Config(self.app, http=protocol, lifespan="off", log_config=None, server_header=False,
                                proxy_headers=False, timeout_keep_alive=c.keep_alive_s,
                                timeout_graceful_shutdown=c.graceful_timeout_s,
                                h11_max_incomplete_event_size=c.max_header_bytes)
        self._uvicorn = uvicorn.Server(config)
        self.runtime.start_worker()
        self._thread = threading.Thread(target=self._serve, name="bitdance-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start; see the log above.")
            time.sleep(0.01)
        log.info("serving %s on %s", self.model_name, self.url)
        return self

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        loop.create_task(self._sweep())
        try:
            loop.run_until_complete(self._uvicorn.serve(sockets=[self._sock]))
        finally:
            for connection in list(self._uvicorn.server_state.connections):
                connection.transport.close()
            leftover = [t for t in asyncio.all_tasks(loop) if not t.done()]  # the sweeper, library watchers
            for task in leftover:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
            loop.close()

    async def _sweep(self) -> None:
        """Drop finished asynchronous requests past their time, whether or not new ones come."""
        interval = max(0.05, min(30.0, self.config.finished_ttl_s / 4))
        while True:
            await asyncio.sleep(interval)
            self.jobs.evict()

    def shutdown(self, cancel_active: bool = True, timeout: float | None = None) -> None:
        """See the module docstring. A second call waits for the first."""
        with self._admit:
            first = not self._stopping.is_set()
            self._stopping.set()
        if not first:
            self._stopped.wait()
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        active = self.jobs.active()
        if cancel_active:
            self.cancel_all()
        for job in active:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not job.handle.wait(left):
                job.cancel("shutdown")
        for job in active:  # cancelled above: give the worker a moment to confirm
            job.handle.wait(5.0)
        if self._thread is not None:
            waited = time.monotonic() + 10.0
            while self.in_flight > 0 and time.monotonic() < waited:  # answers and final events go out
                time.sleep(0.02)
            self._uvicorn.should_exit = True
            self._thread.join()
        else:
            self._sock.close()
        self.runtime.stop_worker(cancel=cancel_active)
        self.previews.close()
        self._stopped.set()
        log.info("server stopped")

    def cancel_all(self) -> None:
        for job in self.jobs.active():
            job.cancel("shutdown")

    def __enter__(self) -> "ImageServer":
        return self.start()

    def __exit__(self, *exc) -> bool:
        self.shutdown(cancel_active=True)
        return False

    # ---------------------------------------------------------------- requests
    async def in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on a worker thread (encoding, the runtime's blocking calls), never on the event loop."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._threads)

    async def submit(self, params: GenerationParams) -> Job:
        """Hand a checked request to the runtime: 503 when stopping, 429 when ``max_pending`` are pending, 400 when
        the runtime refuses it; arms its deadline."""
        job = await self.in_thread(self._submit, params, asyncio.get_running_loop())
        timeouts = [t for t in (params.timeout, self.config.request_timeout_s) if t is not None]
        if timeouts:
            job.set_deadline(min(timeouts))
        return job

    def _submit(self, params: GenerationParams, loop: asyncio.AbstractEventLoop) -> Job:
        with self._admit:
            if self.stopping:
                raise ApiError(503, "the server is shutting down and takes no new requests.", code="server_stopping")
            pending = len(self.jobs.active())
            if pending >= self.config.max_pending:
                wait = self.drain.retry_after_s(pending)
                raise ApiError(429, f"{pending} requests are already queued or running, this server's limit; retry "
                               f"in about {wait} s.", code="queue_full", headers={"Retry-After": str(wait)})
            try:
                handle = self.runtime.submit(params.request)
            except InvalidRequestError as e:
                raise from_invalid_request(e) from None
            except BitDanceError as e:
                raise ApiError(400, str(e), code="invalid_request") from None
            job = Job(handle, params, loop, self._job_ended)
            self.jobs.add(job)
        handle.add_listener(job.on_event)
        return job

    def _job_ended(self, job: Job) -> None:
        """A job's end (any thread): metrics, the drain rate, the preview cost estimate, the failure's cause."""
        outcome = job.outcome
        if outcome == "cancelled" and job.cancel_reason == "deadline":
            outcome = "expired"
        self.metrics.generations.labels(outcome).inc()
        self.drain.record_end()
        if outcome == "failed":
            log.error("generation %s failed: %s", job.id, job.error)
        if outcome != "done":
            return
        self.metrics.generation_duration.observe(job.finished_at - job.submitted)
        try:
            timings = getattr(job.handle.result(timeout=0), "timings", None) or {}
        except Exception:  # noqa: BLE001 - timings are information only
            timings = {}
        if "queued_s" in timings:
            self.metrics.queue_wait.observe(timings["queued_s"])
        if timings.get("decode_s"):
            self.previews.budget.hint(timings["decode_s"])

    def _model_info(self) -> dict[str, Any]:
        """The static part of ``/healthz``."""
        try:
            described = self.runtime.describe()
        except Exception:  # noqa: BLE001 - information only
            described = {}
        lim = self.limits
        keep = ("backend", "device", "dtype", "tokens_per_step")
        return {"model_name": self.model_name, "family": lim.family, "title": lim.title,
                "condition_field": lim.condition_field, "num_classes": lim.num_classes,
                "sizes": lim.size_names(), "default_size": size_name(lim.default_size),
                "max_n": lim.max_n, "max_n_unguided": lim.max_n_unguided,
                "max_sampling_steps": lim.max_sampling_steps, "max_prompt_chars": lim.max_prompt_chars,
                "defaults": {"num_sampling_steps": lim.default_steps, "guidance_scale": lim.default_guidance},
                "output_formats": list(OUTPUT_FORMATS), "max_partial_images": MAX_PARTIAL_IMAGES,
                "max_queue": self.config.max_pending, "request_timeout": self.config.request_timeout_s,
                "auth": "bearer" if self.config.api_key else None,
                "model": {k: described[k] for k in keep if k in described}}


def _bind(host: str, port: int) -> socket.socket:
    """A bound (not yet listening) TCP socket; uvicorn listens on it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock
