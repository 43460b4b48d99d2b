"""Helpers of the HTTP server tests: start an ``ImageServer`` on a free loopback port, send requests with
``http.client`` (raw control of headers and bodies), and read server-sent-event streams."""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
from typing import Any, Iterator

import pytest
import torch
from PIL import Image

from bitdance_rt.http.server import ImageServer, ServerConfig

GENERATIONS = "/v1/images/generations"
SERVING_METHODS = ("submit", "start_worker", "stop_worker", "stats")


def tiny_runtime_or_skip(model_path, max_batch: int = 4, **kwargs: Any):
    """A fresh CPU float32 runtime of a tiny model (its worker is started and stopped by the test's server, so the
    session-wide runtimes stay untouched); skips while ``Runtime`` has no serving methods. ``max_batch`` 4 (two
    guided images at once): the continuous batch computes all its rows every step, so a CPU wants it small."""
    from bitdance_rt.runtime import Runtime

    missing = [m for m in SERVING_METHODS if not hasattr(Runtime, m)]
    if missing:
        pytest.skip(f"Runtime has no {', '.join(missing)} yet (the serving core is not in this tree)")
    return Runtime.from_pretrained(model_path, device="cpu", dtype=torch.float32, max_batch=max_batch, **kwargs)


@contextlib.contextmanager
def running_server(runtime, **config: Any) -> Iterator[ImageServer]:
    """A started server on 127.0.0.1 port 0; shut down (cancelling what is left) on exit."""
    server = ImageServer(runtime, "127.0.0.1", 0, ServerConfig(**config)).start()
    try:
        yield server
    finally:
        server.shutdown(cancel_active=True, timeout=10)


class Response:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)

    def error(self) -> dict[str, Any]:
        err = self.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}, err
        return err


def call(server: ImageServer, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
         headers: dict[str, str] | None = None, timeout: float = 30.0,
         conn: http.client.HTTPConnection | None = None) -> Response:
    """One request; ``body`` is sent as JSON, ``raw`` as given. ``conn``: reuse a kept-alive connection."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    hdrs = dict(headers or {})
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        return Response(resp.status, resp.headers, resp.read())
    finally:
        if own:
            conn.close()


def decode_image(b64: str, fmt: str) -> Image.Image:
    """A base64 image file that must be of PIL format ``fmt`` (``"PNG"``, ``"JPEG"``, ``"WEBP"``)."""
    image = Image.open(io.BytesIO(base64.b64decode(b64, validate=True)))
    assert image.format == fmt, f"a {image.format}, not a {fmt}"
    image.load()
    return image


def decode_png(b64: str) -> Image.Image:
    raw = base64.b64decode(b64, validate=True)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return decode_image(b64, "PNG")


def read_events(resp: http.client.HTTPResponse) -> list[tuple[str, dict[str, Any]]]:
    """All events of a stream until the server closes it: ``[(event name, data)]``; comments are skipped."""
    events, name, data = [], None, []
    for line in resp:
        line = line.decode("utf-8").rstrip("\r\n")
        if not line:
            if name is not None:
                events.append((name, json.loads("\n".join(data))))
            name, data = None, []
        elif line.startswith(":"):
            continue
        elif line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            data.append(line[len("data: "):])
    return events


def open_stream(server: ImageServer, method: str, path: str, body: Any = None,
                timeout: float = 60.0) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"} if body is not None else {}
    conn.request(method, path, body=None if body is None else json.dumps(body).encode(), headers=headers)
    return conn, conn.getresponse()


def whole_stream(server: ImageServer, method: str, path: str, body: Any = None, timeout: float = 60.0
                 ) -> tuple[http.client.HTTPResponse, list[tuple[str, dict[str, Any]]]]:
    """Open an event stream, read it to the end (``read_events``) and close the connection: ``(response, events)``
    (the response's status and headers stay readable)."""
    conn, resp = open_stream(server, method, path, body, timeout)
    try:
        return resp, read_events(resp)
    finally:
        conn.close()


class RawAnswer:
    """What came back on a raw connection: status, lower-cased headers, body, seconds until the server closed."""

    def __init__(self, data: bytes, seconds: float):
        head, _, self.body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1]) if lines[0].startswith("HTTP/") else None
        self.headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        self.seconds = seconds
        self.raw = data

    def error(self) -> dict[str, Any]:
        err = json.loads(self.body)["error"]
        assert set(err) == {"message", "type", "param", "code"}, err
        return err


def raw_exchange(server: ImageServer, chunks: list[bytes], pause: float = 0.0, timeout: float = 30.0) -> RawAnswer:
    """Send ``chunks`` on a fresh connection (``pause`` seconds apart; a send the server refuses ends the sending),
    then read until the server closes the connection."""
    import socket
    import time

    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        for i, chunk in enumerate(chunks):
            try:
                sock.sendall(chunk)
            except OSError:
                break
            if pause and i < len(chunks) - 1:
                time.sleep(pause)
        data = b""
        try:
            while True:
                got = sock.recv(65536)
                if not got:
                    break
                data += got
        except ConnectionResetError:
            pass
    return RawAnswer(data, time.monotonic() - start)
