"""``RequestGuard``: the outermost ASGI layer. Every HTTP request passes it once; it

- counts the request once in ``/metrics`` when it ends (its status; 499 when the client left before an answer),
  with its duration by endpoint;
- refuses what the app should never see, with an OpenAI-shaped JSON error: HTTP versions other than 1.0 / 1.1
  (505), an over-long URL (414) or header block (431), more than ``limit_concurrency`` requests in progress (503),
  ``Transfer-Encoding`` or a body-carrying method without ``Content-Length`` (411), a ``Content-Length`` over
  ``max_body_bytes`` (413, before any ``100 Continue`` goes out);
- cuts off a body still arriving at the request's receive deadline (408; the deadline is set by ``protocol.py``:
  headers and body together, however slowly the bytes come);
- adds ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY`` and ``Referrer-Policy: no-referrer``;
- turns an unexpected exception into a 500 (logged once, with its traceback: that is a bug of the server), and
  never lets one reach uvicorn.

A body refused before it was read is left to the connection layer to skip when it is small (the connection stays
usable); a large one, or one whose client waits for ``100 Continue``, closes the connection.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import anyio

from .errors import ApiError, send_error
from .metrics import endpoint_label
from .protocol import DEADLINE_KEY

log = logging.getLogger("bitdance_rt.http")

BODY_METHODS = (b"POST", b"PUT", b"PATCH")
DRAIN_LIMIT = 1 << 20  # a refused body up to this size is skipped by the connection layer; larger ones close it
SECURITY_HEADERS = ((b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"))
CLIENT_LEFT = 499


class RequestGuard:
    def __init__(self, app, *, count: Callable[[int, str, float | None], None], max_body_bytes: int,
                 receive_timeout: float, limit_concurrency: int | None, max_url_bytes: int = 8192,
                 max_header_bytes: int = 16384):
        self.app = app
        self.count = count
        self.max_body_bytes = max_body_bytes
        self.receive_timeout = receive_timeout
        self.limit_concurrency = limit_concurrency
        self.max_url_bytes = max_url_bytes
        self.max_header_bytes = max_header_bytes
        self.in_flight = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        state: dict[str, Any] = {"status": None, "left": False}
        close = False

        async def send_guarded(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                if close and b"connection" not in present:
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            await send(message)

        self.in_flight += 1
        try:
            refusal, close = self._refusal(scope)
            if refusal is not None:
                await send_error(send_guarded, refusal)
                return
            deadline = (scope.get("extensions") or {}).get(DEADLINE_KEY) or \
                anyio.current_time() + self.receive_timeout
            await self.app(scope, self._receive_until(receive, deadline, state), send_guarded)
            if state["status"] is None and not state["left"]:
                raise RuntimeError("the app returned without an answer")
        except Exception as e:  # noqa: BLE001 - the last line of defence
            if isinstance(e, ApiError):
                err = e
            else:
                log.exception("internal error on %s %s", scope.get("method"), scope.get("path"))
                close = True
                err = ApiError(500, "internal server error; see the server log.", code="internal_error")
            if state["status"] is None and not state["left"]:
                await send_error(send_guarded, err)
        finally:
            self.in_flight -= 1
            status = state["status"] or (CLIENT_LEFT if state["left"] else 500)
            self.count(status, endpoint_label(scope.get("path", "")), time.monotonic() - started)

    def _refusal(self, scope) -> tuple[ApiError | None, bool]:
        """What to refuse before the app runs, and whether the connection must close after it."""
        if scope.get("http_version") not in ("1.0", "1.1"):
            return ApiError(505, f"HTTP/{scope.get('http_version')} is not supported; use HTTP/1.1.",
                            code="http_version_not_supported"), True
        if len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") > self.max_url_bytes:
            return ApiError(414, f"the URL is longer than {self.max_url_bytes} bytes; shorten it.",
                            code="uri_too_long"), True
        headers = scope.get("headers") or []
        if sum(len(k) + len(v) + 4 for k, v in headers) > self.max_header_bytes:
            return ApiError(431, f"the request's headers take more than {self.max_header_bytes} bytes; send fewer "
                            "or shorter headers.", code="headers_too_large"), True
        if self.limit_concurrency is not None and self.in_flight > self.limit_concurrency:
            return ApiError(503, f"the server is handling {self.limit_concurrency} requests, its limit; retry "
                            "shortly.", code="server_busy", headers={"Retry-After": "1"}), False
        names = [k.lower() for k, _ in headers]
        if b"transfer-encoding" in names:
            return ApiError(411, "chunked request bodies are not accepted; send a Content-Length.",
                            code="length_required"), True
        lengths = [v for k, v in headers if k.lower() == b"content-length"]
        method = scope.get("method", "").encode("latin-1")
        if not lengths:
            if method in BODY_METHODS:
                return ApiError(411, "a Content-Length header is required.", code="length_required"), True
            return None, False
        if len(set(lengths)) > 1 or not lengths[0].isdigit():  # the connection layer refuses these already
            return ApiError(400, f"invalid Content-Length {b', '.join(lengths).decode('latin-1')!r}: send exactly "
                            "one, holding the body's size in bytes.", code="invalid_content_length"), True
        length = int(lengths[0])
        if length > self.max_body_bytes:
            expects = any(k.lower() == b"expect" for k, _ in headers)
            return ApiError(413, f"the body has {length} bytes; at most {self.max_body_bytes} are accepted.",
                            code="body_too_large"), expects or length > DRAIN_LIMIT
        return None, False

    def _receive_until(self, receive, deadline: float, state: dict[str, Any]):
        """``receive`` with the body's deadline; notes when the client left."""
        body_done = False

        async def guarded():
            nonlocal body_done
            if body_done:
                message = await receive()
            else:
                with anyio.move_on_after(max(0.0, deadline - anyio.current_time())) as scope:
                    message = await receive()
                if scope.cancelled_caught:
                    raise ApiError(408, f"the request body did not arrive in time: a request's headers and body "
                                   f"must arrive within {self.receive_timeout:g} s; send the body at once.",
                                   code="request_timeout", headers={"Connection": "close"})
                if message["type"] == "http.request" and not message.get("more_body", False):
                    body_done = True
            if message["type"] == "http.disconnect":
                state["left"] = True
            return message

        return guarded
