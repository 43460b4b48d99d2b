"""Server-sent events: the wire format of one event (``event: NAME`` + one ``data:`` line of JSON + a blank
line) and the keep-alive comment sent while a stream is idle."""

from __future__ import annotations

import json
from typing import Any

CONTENT_TYPE = "text/event-stream; charset=utf-8"
KEEP_ALIVE = b": keep-alive\n\n"


def format_event(name: str, data: dict[str, Any]) -> bytes:
    """One event. JSON without indentation has no raw newlines (strings escape them), so one ``data:`` line
    carries it whole."""
    if not name or any(c in name for c in "\r\n:"):
        raise ValueError(f"format_event: event name {name!r} must be non-empty, without newlines or colons")
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode("utf-8")
