"""The HTTP/1.1 connection layer: uvicorn's h11 protocol with the limits uvicorn lacks, answering in JSON.

- **Receive deadline**: a request's headers and body must arrive within ``receive_timeout`` seconds, counted from
  when the server starts waiting for it (the connection's opening, or the previous answer on a kept-alive
  connection). Uvicorn itself has no such limit (only an idle keep-alive timeout), so a client sending one byte now
  and then held its connection for ever. Here: headers still incomplete at the deadline get a 408 and the
  connection is closed; an idle connection is closed silently; a body still arriving is cut off by the app
  (``guard.py``), which reads the same deadline from the request's scope (``DEADLINE_KEY``).
- **Connection cap**: beyond ``max_connections`` open connections a new one gets a 503 at once and is closed.
- **Framing errors** (h11 refuses the request: conflicting or malformed ``Content-Length``, a bad request line,
  a missing ``Host``, headers over the size limit, an unsupported ``Transfer-Encoding``) are answered with the
  OpenAI-shaped JSON error body instead of uvicorn's plain text, with the status h11 suggests (400, 414 for an
  over-long request line, 431, 501), and the connection is closed.

``on_answer(status)`` counts every answer given here in ``/metrics``. Always the h11 implementation, so behaviour
does not depend on whether httptools is installed.
"""

from __future__ import annotations

import json
import sys
from typing import Callable

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import error_body

DEADLINE_KEY = "bitdance_rt.receive_deadline"  # in scope["extensions"]: the loop time the request must be in by
STATUS_TEXT = {400: "Bad Request", 408: "Request Timeout", 414: "URI Too Long", 431: "Request Header Fields Too Large",
               501: "Not Implemented", 503: "Service Unavailable"}


def raw_json_answer(status: int, message: str, code: str, extra_headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 answer with an error body, for when no request cycle exists."""
    body = json.dumps(error_body(status, message, code)).encode("utf-8")
    head = [f"HTTP/1.1 {status} {STATUS_TEXT.get(status, 'Error')}", "content-type: application/json",
            f"content-length: {len(body)}", "connection: close", "cache-control: no-store"]
    head += [f"{k}: {v}" for k, v in extra_headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def framing_error(exc: BaseException | None, buffered: bytes) -> tuple[int, str, str]:
    """(status, code, message) for a request h11 could not parse."""
    status = getattr(exc, "error_status_hint", 400) or 400
    detail = str(exc) if exc is not None else "unparseable request"
    if status == 431 and b"\n" not in buffered:
        return 414, "uri_too_long", "the request line is too long; shorten the URL."
    if status == 431:
        return 431, "headers_too_large", "the request's headers are too large; send fewer or shorter headers."
    if status == 501:
        return 501, "unsupported_transfer_encoding", (f"{detail}; send the body with a Content-Length instead.")
    if "content-length" in detail.lower():
        return 400, "invalid_content_length", (f"invalid Content-Length ({detail}): send exactly one "
                                               "Content-Length header holding the body's size in bytes (digits only).")
    return 400, "invalid_http_request", f"the request is not valid HTTP/1.1 ({detail})."


def guarded_protocol(*, receive_timeout: float, max_connections: int,
                     on_answer: Callable[[int], None] | None = None) -> type[H11Protocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with these limits."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,),
                {"receive_timeout": float(receive_timeout), "max_connections": int(max_connections),
                 "on_answer": staticmethod(on_answer) if on_answer is not None else None})


class GuardedH11Protocol(H11Protocol):
    receive_timeout: float = 30.0
    max_connections: int = 2048
    on_answer: Callable[[int], None] | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._timer = None
        self._deadline: float | None = None
        self._refused = False

    # ---------------------------------------------------------------- connection
    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._refused = True
            self._answer_and_close(503, f"the server has {self.max_connections} open connections, its limit; "
                                   "retry shortly.", "too_many_connections", (("retry-after", "1"),))
            return
        self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        if self.cycle is not None and self.cycle is not before:  # a request's headers are in: its task is queued
            self.cycle.scope.setdefault("extensions", {})[DEADLINE_KEY] = self._deadline

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            self._arm()  # the next request on this connection (maybe pipelined: parsed just below) has its own
        super().on_response_complete()

    # ---------------------------------------------------------------- the receive deadline
    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.time() + self.receive_timeout
        self._timer = self.loop.call_at(self._deadline, self._receive_timed_out)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _receive_timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is with the app: it enforces the deadline on the body itself
        partial_head = self.conn.their_state is h11.IDLE and bool(self.conn.trailing_data[0])
        if partial_head:
            self._answer_and_close(408, f"the request's headers did not arrive within {self.receive_timeout:g} s; "
                                   "send the whole request at once.", "request_timeout")
        else:  # idle, or still sending the body of a request already answered
            self.transport.close()

    # ---------------------------------------------------------------- answers without a request cycle
    def send_400_response(self, msg: str) -> None:
        """Called by uvicorn while handling h11's ``RemoteProtocolError`` (hence ``sys.exc_info``)."""
        status, code, message = framing_error(sys.exc_info()[1], bytes(self.conn.trailing_data[0]))
        self._answer_and_close(status, message, code)

    def _answer_and_close(self, status: int, message: str, code: str,
                          extra_headers: tuple[tuple[str, str], ...] = ()) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self.transport.write(raw_json_answer(status, message, code, extra_headers))
            self.transport.close()
        if self.on_answer is not None:
            self.on_answer(status)
