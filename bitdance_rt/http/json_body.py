"""Request bodies as JSON objects: the media type, UTF-8, standard JSON only (no NaN / Infinity), and a bound on
nesting checked before parsing, so a small body nested a thousand levels deep is a 400 rather than a recursion
error."""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

from .errors import ApiError

MAX_DEPTH = 16
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_BRACKETS = re.compile(rb"[\[\]{}]")
_EXAMPLE = '{"prompt": "a red fox", "size": "1024x1024"}'


def check_json_media_type(content_type: str | None) -> None:
    """415 unless the Content-Type is ``application/json`` (parameters such as ``charset`` allowed)."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media != "application/json":
        raise ApiError(415, f"the body must be JSON with Content-Type: application/json, got "
                       f"{media or 'no Content-Type'}.", code="unsupported_media_type")


def nesting_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in ``body`` (brackets inside strings do not count)."""
    brackets = _BRACKETS.findall(_STRING.sub(b'""', body))
    steps = (1 if b in (b"[", b"{") else -1 for b in brackets)
    return max(accumulate(steps, initial=0))


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def decode_json_object(body: bytes, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """The body as a dict; 400 ``invalid_json`` saying what is wrong otherwise."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "the request body is not UTF-8 text; send a JSON object.", code="invalid_json") from None
    depth = nesting_depth(body)
    if depth > max_depth:
        raise ApiError(400, f"the request body nests arrays or objects {depth} levels deep; at most {max_depth} "
                       f"are accepted. Send a flat JSON object such as {_EXAMPLE}.", code="invalid_json")
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except ValueError as e:
        raise ApiError(400, f"the request body is not valid JSON ({e}); send a JSON object such as {_EXAMPLE}.",
                       code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, got a JSON {_json_kind(data)}.",
                       code="invalid_json")
    return data


def _json_kind(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")
