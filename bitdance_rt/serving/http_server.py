"""``ImageServer``: an HTTP front end for a ``Runtime`` (Python standard library only: ``ThreadingHTTPServer``).

Endpoints (JSON unless said otherwise; every error is ``{"error": {"message", "type", "param", "code"}}``):

- ``POST /v1/images/generations`` — OpenAI-style: body fields in ``http_schema.py``; answers
  ``{"created", "data": [{"b64_json": PNG}], "id", "seed"}`` once the images are made. With ``"stream": true`` the
  answer is a server-sent-event stream instead (below), and closing the connection cancels the request.
- ``POST /v1/images/generations/async`` — same body; answers 202 ``{"id", "status", "url", "events_url"}`` at once.
- ``GET /v1/images/generations/{id}`` — ``{"id", "status", "progress": {"step", "total"}, "created"}`` plus
  ``"data"`` when done or ``"error"`` when failed or cancelled.
- ``GET /v1/images/generations/{id}/events`` — server-sent events: first ``queued`` ``{"id", "status"}``, then
  ``progress`` ``{"id", "step", "total"}`` after AR steps (only the newest when a client lags), with ``"preview"``
  (base64 PNG of the first image so far, longer side <= ``preview_max_side``) every ``preview_every`` steps; then
  exactly one of ``done`` (the generation response body) or ``error`` (an error body). A stream of a finished
  request sends its end at once. Leaving it does not cancel the request.
- ``DELETE /v1/images/generations/{id}`` — cancel: 200 ``{"id", "status"}``; 409 ``already_finished``.
- ``GET /healthz`` — 200 ``{"status": "ok", family, sizes, ...}``; 503 ``{"status": "stopping"}`` during shutdown.
- ``GET /metrics`` — Prometheus text (``metrics.py``). ``GET /`` — the demo page (``web/index.html``).

Status codes: 400 bad JSON or a bad field (also what the runtime refuses, e.g. a request that can never fit its
memory budget — OpenAI clients expect 400 for every invalid request, so there is no 422); 404 unknown path or id;
405 wrong method (with ``Allow``); 409 cancel of a finished request, or a synchronous request cancelled by a
``DELETE``; 411 no ``Content-Length``; 413 body over ``max_body_bytes``; 415 body not ``application/json``;
500 the request's generation failed (other requests go on); 503 the server is stopping or ``max_pending``
requests are already queued or running (with ``Retry-After``).

Every submitted request gets an id (``X-Request-Id`` header of synchronous answers and streams, ``"id"`` in every
body and event). Connections are handled in ``http_handler.py``. ``shutdown(cancel_active)`` stops taking work
(503), then cancels or finishes the active requests, lets their responses go out, closes the socket and stops the
runtime's worker.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ..errors import BitDanceError
from .http_errors import ApiError
from .http_handler import RequestHandler
from .http_images import as_image_list, png_b64
from .http_jobs import TERMINAL, Job, JobRegistry
from .http_schema import GenerationParams, model_limits, size_name
from .metrics import ServerCounters

log = logging.getLogger("bitdance_rt.serving.http")

PAGE = Path(__file__).parent / "web" / "index.html"


@dataclass
class ServerConfig:
    """Per-request caps and server behaviour. ``preview_every``: AR steps between previews in progress streams
    (``None``: about 8 per request; 0: none). ``default_size``: ``(height, width)``; ``None``: the model's.
    Finished asynchronous requests stay readable for ``finished_ttl_s`` seconds (at most ``max_finished`` of them);
    synchronous and streamed ones are forgotten once answered."""
    max_images: int = 4
    max_sampling_steps: int = 1000
    max_prompt_chars: int = 4000
    max_body_bytes: int = 64 * 1024
    max_pending: int = 64
    preview_every: int | None = None
    preview_max_side: int = 256
    heartbeat_s: float = 15.0
    finished_ttl_s: float = 600.0
    max_finished: int = 64
    default_size: tuple[int, int] | None = None
    idle_timeout_s: float = 60.0


class _Listener(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    app: "ImageServer"

    def handle_error(self, request, client_address) -> None:
        """A client that hangs up or goes quiet is routine (debug log); anything else is logged with its trace
        instead of socketserver's print to stderr."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            log.debug("connection from %s ended: %s", client_address, sys.exc_info()[1])
        else:
            log.exception("error on the connection from %s", client_address)


class ImageServer:
    """Serve ``runtime`` on ``host:port`` (port 0 picks a free one). ``start()`` starts its worker and the
    listening thread; ``shutdown()`` ends both. Usable as a context manager."""

    def __init__(self, runtime, host: str = "127.0.0.1", port: int = 8000, config: ServerConfig | None = None):
        self.runtime = runtime
        self.config = config or ServerConfig()
        c = self.config
        self.limits = model_limits(runtime, max_images=c.max_images, max_sampling_steps=c.max_sampling_steps,
                                   max_prompt_chars=c.max_prompt_chars, default_size=c.default_size)
        self.jobs = JobRegistry(c.finished_ttl_s, c.max_finished)
        self.counters = ServerCounters()
        self.info = self._model_info()
        self.page = PAGE.read_bytes() if PAGE.is_file() else None
        self._state = threading.Lock()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._busy = 0
        self._busy_cond = threading.Condition()
        self._httpd = _Listener((host, port), RequestHandler)
        self._httpd.app = self
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle
    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        host = self._httpd.server_address[0]
        return f"http://{host}:{self.port}"

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def start(self) -> "ImageServer":
        self.runtime.start_worker()
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="bitdance-http", daemon=True)
        self._thread.start()
        log.info("serving on %s", self.url)
        return self

    def shutdown(self, cancel_active: bool = True, timeout: float | None = None) -> None:
        """Stop taking new requests (they get 503), cancel (``cancel_active``) or finish the active ones, wait up
        to ``timeout`` seconds for them (then cancel what is left) and for their responses to be written, close
        the socket and stop the runtime's worker. A second call waits for the first."""
        with self._state:
            first = not self._stopping.is_set()
            self._stopping.set()
        if not first:
            self._stopped.wait()
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        active = self.jobs.active()
        if cancel_active:
            for job in active:
                job.handle.cancel()
        for job in active:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not job.handle.wait(left):
                job.handle.cancel()
        for job in active:  # cancelled above: give the worker a moment to confirm
            job.handle.wait(5.0)
        with self._busy_cond:
            self._busy_cond.wait_for(lambda: self._busy == 0, timeout=10.0)
        if self._thread is not None:  # serve_forever is running (shutdown() would wait forever otherwise)
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()
        self.runtime.stop_worker(cancel=cancel_active)
        self._stopped.set()
        log.info("server stopped")

    def __enter__(self) -> "ImageServer":
        return self.start()

    def __exit__(self, *exc) -> bool:
        self.shutdown(cancel_active=True)
        return False

    def _model_info(self) -> dict[str, Any]:
        try:
            described = self.runtime.describe()
        except Exception:  # noqa: BLE001 - information only
            described = {}
        keep = ("backend", "device", "dtype", "tokens_per_step")
        return {"family": self.limits.family, "sizes": self.limits.size_names(),
                "default_size": size_name(self.limits.default_size), "max_n": self.limits.max_images,
                "max_sampling_steps": self.limits.max_sampling_steps,
                "model": {k: described[k] for k in keep if k in described}}

    # ---------------------------------------------------------------- work
    def busy(self, delta: int) -> None:
        with self._busy_cond:
            self._busy += delta
            self._busy_cond.notify_all()

    def submit(self, params: GenerationParams) -> Job:
        """Hand a checked request to the runtime; 503 when stopping or full, 400 when the runtime refuses it."""
        with self._state:
            if self._stopping.is_set():
                raise ApiError(503, "the server is shutting down and takes no new requests.", code="server_stopping")
            if len(self.jobs.active()) >= self.config.max_pending:
                raise ApiError(503, f"{self.config.max_pending} requests are already queued or running; retry "
                               "later.", code="queue_full", headers={"Retry-After": "1"})
            try:
                handle = self.runtime.submit(**params.submit_kwargs())
            except BitDanceError as e:
                raise ApiError(400, str(e), code="invalid_request") from None
            job = Job(handle, n=params.n, size=size_name((params.height, params.width)), on_finish=self._finished)
            self.jobs.add(job)
        handle.add_listener(job.on_event)
        return job

    def _finished(self, job: Job, outcome: str) -> None:
        self.counters.outcome(outcome)

    def final_body(self, job: Job) -> tuple[int, dict[str, Any]]:
        """(status, body) of a finished job: the images, or why there are none. Encoded once per job."""
        with job.final_lock:
            if job.final_body is None:
                job.final_body = self._final_body(job)
            return job.final_body["status"], job.final_body["body"]

    def _final_body(self, job: Job) -> dict[str, Any]:
        try:
            out = job.handle.result(timeout=5.0)
        except Exception as e:  # noqa: BLE001 - reported to this request's client only
            status = job.status
            if status == "cancelled":
                err = ApiError(503 if self.stopping else 409, f"request {job.id} was cancelled"
                               + (" because the server is shutting down." if self.stopping else "."),
                               code="request_cancelled")
            else:
                err = ApiError(500, f"generation of request {job.id} failed: {job.error or e}",
                               code="generation_failed")
            return {"status": err.status, "body": {"id": job.id, **err.body()}}
        data = [{"b64_json": png_b64(im)} for im in as_image_list(out.images)]
        body = {"created": job.created, "data": data, "id": job.id, "seed": getattr(out, "seed", None)}
        return {"status": 200, "body": body}

    def job_summary(self, job: Job) -> dict[str, Any]:
        step, total = job.progress()
        status = job.status
        body: dict[str, Any] = {"id": job.id, "status": status, "created": job.created, "size": job.size,
                                "n": job.n, "progress": {"step": step, "total": total}}
        if status in TERMINAL:
            _, final = self.final_body(job)
            body.update({k: v for k, v in final.items() if k in ("data", "error", "seed")})
        return body
