"""``RequestHandler``: one HTTP connection of ``ImageServer`` — routing, request bodies, the endpoints and the
server-sent-event streams. The endpoints, status codes and event names are documented in ``http_server.py``.

One thread per connection (``ThreadingHTTPServer``); HTTP/1.1 with keep-alive for ordinary answers (every one has
a ``Content-Length``; a body left unread is drained or the connection closed), ``Connection: close`` for event
streams. A synchronous request whose client goes away is cancelled.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import select
import socket
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urlsplit

from . import sse
from .http_errors import ApiError
from .http_jobs import TERMINAL, Job
from .http_schema import GenerationParams, parse_generation
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import render_metrics

if TYPE_CHECKING:
    from .http_server import ImageServer

log = logging.getLogger("bitdance_rt.serving.http")

GENERATIONS = "/v1/images/generations"
_JOB_PATH = re.compile(r"^/v1/images/generations/(gen-[0-9a-f]{16})(/events)?$")
_DISCARD_LIMIT = 1 << 20  # unread request bodies up to this size are drained so the client sees our answer


class _ClientGone(Exception):
    pass


class RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "bitdance-rt"

    def setup(self) -> None:
        self.timeout = self.server.app.config.idle_timeout_s
        super().setup()

    @property
    def app(self) -> ImageServer:
        return self.server.app

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        log.info("%s %s", self.address_string(), format % args)

    def send_response(self, code: int, message: str | None = None) -> None:
        self.app.counters.response(code)
        super().send_response(code, message)

    # ---------------------------------------------------------------- routing
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_OPTIONS(self) -> None:
        self._dispatch("OPTIONS")

    def _routes(self, path: str) -> tuple[dict[str, Callable[..., None]], tuple]:
        if path == "/":
            return {"GET": self._page}, ()
        if path == "/healthz":
            return {"GET": self._healthz}, ()
        if path == "/metrics":
            return {"GET": self._metrics}, ()
        if path == GENERATIONS:
            return {"POST": self._generate}, ()
        if path == GENERATIONS + "/async":
            return {"POST": self._generate_async}, ()
        m = _JOB_PATH.match(path)
        if m is not None:
            if m.group(2):
                return {"GET": self._events}, (m.group(1),)
            return {"GET": self._job_status, "DELETE": self._cancel}, (m.group(1),)
        return {}, ()

    def _dispatch(self, method: str) -> None:
        self._body_read = False
        self.app.busy(+1)
        try:
            path = urlsplit(self.path).path
            routes, args = self._routes(path)
            if not routes:
                raise ApiError(404, f"no endpoint at {path}; see GET / for the page, POST {GENERATIONS} to "
                               "generate.", code="not_found")
            if method not in routes:
                raise ApiError(405, f"{method} is not allowed on {path}; use {', '.join(sorted(routes))}.",
                               code="method_not_allowed", headers={"Allow": ", ".join(sorted(routes))})
            routes[method](*args)
        except ApiError as e:
            self._error(e)
        except _ClientGone:
            self.close_connection = True
        except Exception:  # noqa: BLE001 - one request's bug must not take the server down
            log.exception("internal error on %s %s", method, self.path)
            self.close_connection = True  # the failure may have come mid-response: start the client afresh
            self._error(ApiError(500, "internal server error; see the server log.", code="internal_error"))
        finally:
            self._finish_body()
            self.app.busy(-1)

    # ---------------------------------------------------------------- bodies and responses
    def _content_length(self) -> int | None:
        raw = self.headers.get("Content-Length")
        if raw is None:
            return None
        try:
            length = int(raw)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            self._body_read = True
            raise ApiError(400, f"Content-Length {raw!r} is not a byte count.", code="invalid_content_length")
        return length

    def _finish_body(self) -> None:
        """A body nobody read is drained (small) or the connection is closed, so the next request on it parses."""
        if self._body_read:
            return
        self._body_read = True
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            return
        try:
            length = self._content_length() or 0
        except ApiError:
            return
        if length > _DISCARD_LIMIT:
            self.close_connection = True
            return
        try:
            while length > 0:
                chunk = self.rfile.read(min(length, 65536))
                if not chunk:
                    break
                length -= len(chunk)
        except OSError:
            self.close_connection = True

    def _read_json_body(self) -> bytes:
        media = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if media != "application/json":
            raise ApiError(415, f"the body must be JSON with Content-Type: application/json, got "
                           f"{media or 'no Content-Type'}.", code="unsupported_media_type")
        if self.headers.get("Transfer-Encoding"):
            raise ApiError(411, "chunked request bodies are not accepted; send a Content-Length.",
                           code="length_required")
        length = self._content_length()
        if length is None:
            raise ApiError(411, "a Content-Length header is required.", code="length_required")
        limit = self.app.config.max_body_bytes
        if length > limit:
            raise ApiError(413, f"the body has {length} bytes; at most {limit} are accepted.", code="body_too_large")
        body = self.rfile.read(length)
        self._body_read = True
        if len(body) != length:
            self.close_connection = True
            raise ApiError(400, f"the body ended after {len(body)} of {length} bytes.", code="truncated_body")
        return body

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        if status >= 400 and not self._body_read:
            self._finish_body()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode("utf-8"), "application/json", headers)

    def _error(self, e: ApiError) -> None:
        if e.status == 500:
            log.warning("%s %s -> %d %s", self.command, self.path, e.status, e.message)
        try:
            self._json(e.status, e.body(), e.headers)
        except OSError:
            self.close_connection = True

    # ---------------------------------------------------------------- endpoints
    def _page(self) -> None:
        if self.app.page is None:
            raise ApiError(500, "the demo page web/index.html is missing from this installation.",
                           code="page_missing")
        self._send(200, self.app.page, "text/html; charset=utf-8")

    def _healthz(self) -> None:
        stopping = self.app.stopping
        body = {"status": "stopping" if stopping else "ok", **self.app.info}
        self._json(503 if stopping else 200, body)

    def _metrics(self) -> None:
        try:
            stats = dict(self.app.runtime.stats())
        except Exception:  # noqa: BLE001 - metrics must answer even if the runtime cannot
            log.exception("runtime.stats() failed")
            stats = {}
        text = render_metrics(stats, self.app.counters, stopping=self.app.stopping)
        self._send(200, text.encode("utf-8"), METRICS_CONTENT_TYPE)

    def _submit(self) -> tuple[Job, GenerationParams]:
        body = self._read_json_body()
        params = parse_generation(body, self.app.limits)
        return self.app.submit(params), params

    def _generate_async(self) -> None:
        job, _ = self._submit()
        url = f"{GENERATIONS}/{job.id}"
        self._json(202, {"id": job.id, "status": job.status, "url": url, "events_url": url + "/events"},
                   {"Location": url})

    def _generate(self) -> None:
        job, params = self._submit()
        if params.stream:
            self._stream(job, cancel_on_disconnect=True)
            return
        try:
            while not job.handle.wait(0.25):
                if self._client_gone():
                    job.handle.cancel()
                    raise _ClientGone()
        except BaseException:
            if not job.handle.done:
                job.handle.cancel()
            raise
        status, body = self.app.final_body(job)
        self.app.jobs.forget(job.id)
        self._json(status, body, {"X-Request-Id": job.id})

    def _client_gone(self) -> bool:
        """True when the client closed its end (readable with nothing to read)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _job(self, job_id: str) -> Job:
        job = self.app.jobs.get(job_id)
        if job is None:
            raise ApiError(404, f"no request with id {job_id} (finished asynchronous requests are kept "
                           f"{self.app.config.finished_ttl_s:.0f} s; synchronous ones until answered).",
                           code="not_found", param="id")
        return job

    def _job_status(self, job_id: str) -> None:
        self._json(200, self.app.job_summary(self._job(job_id)))

    def _cancel(self, job_id: str) -> None:
        job = self._job(job_id)
        if job.status in TERMINAL:
            raise ApiError(409, f"request {job_id} already finished ({job.status}); nothing to cancel.",
                           code="already_finished", param="id")
        job.handle.cancel()
        job.handle.wait(5.0)
        self._json(200, {"id": job.id, "status": job.status})

    def _events(self, job_id: str) -> None:
        self._stream(self._job(job_id), cancel_on_disconnect=False)

    # ---------------------------------------------------------------- server-sent events
    def _stream(self, job: Job, cancel_on_disconnect: bool) -> None:
        events = job.subscribe()
        self.app.counters.stream_opened(+1)
        try:
            self.close_connection = True
            self.send_response(200)
            self.send_header("Content-Type", sse.CONTENT_TYPE)
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Request-Id", job.id)
            self.send_header("Connection", "close")
            self.end_headers()
            self._pump(job, events)
        except OSError:
            if cancel_on_disconnect and not job.handle.done:
                job.handle.cancel()
            raise _ClientGone() from None
        except Exception:  # noqa: BLE001 - the headers are out: end the stream with an error event
            log.exception("event stream of %s failed", job.id)
            err = ApiError(500, "internal server error in the event stream; see the server log.",
                           code="internal_error")
            try:
                self._write_event("error", {"id": job.id, **err.body()})
            except OSError:
                pass
            raise _ClientGone() from None
        finally:
            job.unsubscribe(events)
            self.app.counters.stream_opened(-1)
            if cancel_on_disconnect and job.handle.done:  # the stream owned the request: it is answered
                self.app.jobs.forget(job.id)

    def _pump(self, job: Job, events: queue.SimpleQueue) -> None:
        cfg = self.app.config
        last_preview, last_step = 0, 0
        self._write_event("queued", {"id": job.id, "status": job.status})
        pending: list[dict[str, Any]] = []
        while True:
            try:
                while True:
                    pending.append(events.get_nowait())
            except queue.Empty:
                pass
            terminal = job.status in TERMINAL or any(e.get("type") in TERMINAL for e in pending)
            step, total = job.progress()
            for e in pending:  # only the newest progress counts
                if e.get("type") == "progress":
                    step, total = max(step, int(e["step"])), int(e["total"])
            pending = []
            if step > last_step and not terminal:
                data: dict[str, Any] = {"id": job.id, "step": step, "total": total}
                every = cfg.preview_every if cfg.preview_every is not None else max(1, total // 8)
                if every > 0 and step - last_preview >= every and step < total:
                    try:
                        data["preview"] = job.preview(step, cfg.preview_max_side)
                        last_preview = step
                    except Exception:  # noqa: BLE001 - a missing preview is not an error of the request
                        log.exception("preview of %s failed", job.id)
                self._write_event("progress", data)
                last_step = step
            if terminal:
                status, body = self.app.final_body(job)
                self._write_event("done" if status == 200 else "error", body)
                return
            try:
                pending.append(events.get(timeout=cfg.heartbeat_s))
            except queue.Empty:
                self.wfile.write(sse.KEEP_ALIVE)
                self.wfile.flush()

    def _write_event(self, name: str, data: dict[str, Any]) -> None:
        self.wfile.write(sse.format_event(name, data))
        self.wfile.flush()
