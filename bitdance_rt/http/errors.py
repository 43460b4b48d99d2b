"""``ApiError``: an HTTP error answer in the OpenAI shape, raised anywhere in request handling.

The body is ``{"error": {"message", "type", "param", "code"}}``: ``type`` is ``"invalid_request_error"`` for 4xx and
``"server_error"`` for 5xx, ``param`` names the JSON field at fault (or is ``None``), ``code`` is a short
machine-readable reason (``"invalid_json"``, ``"queue_full"``, ...). ``from_invalid_request`` turns the runtime's
``InvalidRequestError`` into a 400 whose ``param`` is the field's name on the wire.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import InvalidRequestError

# the runtime's names of request fields -> their names in the HTTP API
WIRE_NAMES = {"num_images": "n", "height": "size", "width": "size", "class_labels": "class_label"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, code: str, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.code, self.param)

    def encoded(self) -> bytes:
        return json.dumps(self.body()).encode("utf-8")


async def send_error(send, err: ApiError) -> None:
    """Answer with ``err`` through an ASGI ``send`` (for middleware: before the app has started an answer)."""
    body = err.encoded()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"cache-control", b"no-store")]
    headers += [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in err.headers.items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def error_body(status: int, message: str, code: str, param: str | None = None) -> dict[str, Any]:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def bad_field(param: str, message: str, code: str = "invalid_value") -> ApiError:
    """400 for one field of the request body."""
    return ApiError(400, message, code=code, param=param)


def from_invalid_request(e: InvalidRequestError) -> ApiError:
    """The runtime refused a request: 400 naming the field when the runtime named one (``invalid_value``), else
    ``invalid_request`` (e.g. a request that can never fit the batch or the memory budget)."""
    param = getattr(e, "param", None)
    if param is None:
        return ApiError(400, str(e), code="invalid_request")
    return bad_field(WIRE_NAMES.get(param, param), str(e))
