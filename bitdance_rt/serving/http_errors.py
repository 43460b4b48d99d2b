"""``ApiError``: an HTTP error response in the OpenAI shape, raised anywhere in request handling.

The body is ``{"error": {"message", "type", "param", "code"}}``: ``type`` is ``"invalid_request_error"`` for 4xx
and ``"server_error"`` for 5xx, ``param`` names the offending JSON field (or ``None``), ``code`` is a short
machine-readable reason (``"invalid_json"``, ``"queue_full"``, ...).
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, code: str, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        kind = "server_error" if self.status >= 500 else "invalid_request_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def bad_field(param: str, message: str, code: str = "invalid_value") -> ApiError:
    """400 for one field of the request body."""
    return ApiError(400, message, code=code, param=param)
