"""Regression tests of the faults the hand-written ThreadingHTTPServer had (issue 15), at the connection layer, on
loopback against the fake runtime: generations with more than 1,024 descriptors open, half-sent requests and
dribbled bodies cut off at the receive deadline, connection and concurrency caps, HTTP framing errors answered in
JSON, no ``100 Continue`` before the size check, HEAD on GET routes, clients that leave counted as 499 without a
traceback, and ``/metrics`` counting each request once. Timed assertions only where a deadline is the feature,
with wide margins."""

from __future__ import annotations

import json
import os
import re
import resource
import socket
import threading
import time

import pytest

from fake_runtime import FakeRuntime
from http_testing import GENERATIONS, call, decode_png, open_stream, raw_exchange, read_events, running_server

DEADLINE = 1.5  # the module server's receive timeout (s)
HOST = b"Host: 127.0.0.1\r\n"
POST_HEAD = b"POST /v1/images/generations HTTP/1.1\r\n" + HOST + b"Content-Type: application/json\r\n"


@pytest.fixture(scope="module")
def server():
    with running_server(FakeRuntime(), default_size=(512, 512), receive_timeout_s=DEADLINE,
                        max_body_bytes=4096) as s:
        yield s


def _metric(server, name: str) -> float:
    text = call(server, "GET", "/metrics").body.decode()
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _no_tracebacks(caplog) -> None:
    assert not [r for r in caplog.records if r.exc_info], "a client fault left a traceback in the log"


# ---------------------------------------------------------------------------------------------------- descriptors
def test_generations_succeed_with_1100_idle_connections_open():
    """The old handler checked for a gone client with select(), which fails for descriptors >= 1024, and dropped
    the generation. 1,100 idle connections (2,200 descriptors here: both ends live in this process), then normal
    generations must be answered."""
    need = 2 * 1100 + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"the hard descriptor limit {hard} is below {need}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    socks: list[socket.socket] = []
    try:
        with running_server(FakeRuntime(), default_size=(512, 512), receive_timeout_s=120) as server:
            socks = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(1100)]
            deadline = time.monotonic() + 30
            while server.connections < 1100 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert server.connections >= 1100
            assert max(int(fd) for fd in os.listdir("/proc/self/fd")) >= 1024, "the scenario needs fds >= 1024"
            for seed in range(3):
                resp = call(server, "POST", GENERATIONS, {"prompt": "x", "seed": seed})
                assert resp.status == 200, resp.body[:300]
                assert decode_png(resp.json()["data"][0]["b64_json"]).size == (512, 512)
            conn, stream = open_stream(server, "POST", GENERATIONS, {"prompt": "x", "stream": True})
            assert [n for n, _ in read_events(stream)] == ["image_generation.completed"]
            conn.close()
    finally:
        for s in socks:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ---------------------------------------------------------------------------------------------------- slow clients
def test_half_sent_requests_get_408_not_500(server, caplog):
    """300 connections each holding a half-sent request (the old server made a thread for each): no thread is
    made for them, and each gets a 408 at the deadline."""
    before = _metric(server, 'bitdance_http_requests_total{code="408"}')
    threads = threading.active_count()
    socks = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(300)]
    try:
        start = time.monotonic()
        for s in socks:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        assert threading.active_count() == threads
        answers = []
        for s in socks:
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            answers.append(data)
        elapsed = time.monotonic() - start
    finally:
        for s in socks:
            s.close()
    assert DEADLINE * 0.6 < elapsed < DEADLINE + 20
    for data in answers:
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408") and b"content-type: application/json" in head, data[:200]
        assert json.loads(body)["error"]["code"] == "request_timeout"
    assert _metric(server, 'bitdance_http_requests_total{code="408"}') - before == 300
    assert _metric(server, 'bitdance_http_requests_total{code="500"}') == 0
    _no_tracebacks(caplog)


def test_a_dribbled_body_is_cut_off_at_the_deadline(server, caplog):
    """One byte every 0.4 s would take 12 s; the whole request must be in within the deadline."""
    head = POST_HEAD + b"Content-Length: 30\r\n\r\n"
    a = raw_exchange(server, [head] + [b" "] * 30, pause=0.4)
    assert a.status == 408 and a.error()["code"] == "request_timeout", a.raw[:300]
    assert a.headers.get("connection") == "close"
    assert DEADLINE * 0.6 < a.seconds < 8.0
    _no_tracebacks(caplog)


def test_an_idle_connection_is_closed_silently(server):
    a = raw_exchange(server, [])
    assert a.raw == b"" and DEADLINE * 0.6 < a.seconds < DEADLINE + 10


def test_a_kept_alive_connection_gets_a_fresh_deadline_per_request(server):
    """Two requests on one connection, the second sent after the first one's deadline would have passed."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        for _ in range(2):
            sock.sendall(b"GET /health HTTP/1.1\r\n" + HOST + b"\r\n")
            got = b""
            while not got.endswith(b'{"status": "ok"}'):
                got += sock.recv(65536)
            assert got.startswith(b"HTTP/1.1 200"), got[:100]
            time.sleep(DEADLINE * 0.7)


def test_connection_cap():
    with running_server(FakeRuntime(), default_size=(512, 512), max_connections=4) as server:
        socks = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(4)]
        try:
            deadline = time.monotonic() + 10
            while server.connections < 4 and time.monotonic() < deadline:
                time.sleep(0.02)
            a = raw_exchange(server, [b"GET /healthz HTTP/1.1\r\n" + HOST + b"\r\n"])
            assert a.status == 503 and a.error()["code"] == "too_many_connections" and a.headers["retry-after"]
        finally:
            for s in socks:
                s.close()
        deadline = time.monotonic() + 10
        while server.connections > 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert call(server, "GET", "/healthz").status == 200


def test_limit_concurrency():
    rt = FakeRuntime()
    with running_server(rt, default_size=(512, 512), limit_concurrency=2) as server:
        rt.hold()
        waiting = [threading.Thread(target=call, args=(server, "POST", GENERATIONS, {"prompt": "x"}))
                   for _ in range(2)]
        for t in waiting:
            t.start()
        deadline = time.monotonic() + 10
        while len(rt.submitted) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        busy = call(server, "GET", "/healthz")
        assert busy.status == 503 and busy.error()["code"] == "server_busy" and busy.headers["Retry-After"] == "1"
        rt.release()
        for t in waiting:
            t.join(10)
        assert call(server, "GET", "/healthz").status == 200


# ---------------------------------------------------------------------------------------------------- framing
@pytest.mark.parametrize("chunks,status,code", [
    ([POST_HEAD + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n{}   "], 400, "invalid_content_length"),
    ([POST_HEAD + b"Content-Length: +37\r\n\r\n"], 400, "invalid_content_length"),
    ([POST_HEAD + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"], 411, "length_required"),
    ([POST_HEAD + b"Transfer-Encoding: gzip\r\n\r\n"], 501, "unsupported_transfer_encoding"),
    ([b"GET /healthz HTTP/2.0\r\n" + HOST + b"\r\n"], 505, "http_version_not_supported"),
    ([b"GET /healthz HTTP/1.1\r\n\r\n"], 400, "invalid_http_request"),  # no Host
    ([b"\x16\x03\x01\x02\x00 not http\r\n\r\n"], 400, "invalid_http_request"),
    ([b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n" + HOST + b"\r\n"], 414, "uri_too_long"),
    ([b"GET /" + b"a" * 10000, b"a" * 10000], 414, "uri_too_long"),  # a request line that never ends
    ([b"GET / HTTP/1.1\r\n" + HOST + b"X-A: " + b"a" * 20000 + b"\r\n\r\n"], 431, "headers_too_large"),
    ([b"GET / HTTP/1.1\r\n" + HOST + b"X-A: " + b"a" * 10000, b"a" * 10000], 431, "headers_too_large"),
])
def test_framing_errors_are_json(server, chunks, status, code, caplog):
    a = raw_exchange(server, chunks, pause=0.05)
    assert a.status == status and a.headers["content-type"] == "application/json", a.raw[:300]
    assert a.error()["code"] == code and a.seconds < DEADLINE  # answered at once, and the connection closed
    _no_tracebacks(caplog)


def test_no_100_continue_before_the_size_check(server):
    a = raw_exchange(server, [POST_HEAD + b"Content-Length: 100000\r\nExpect: 100-continue\r\n\r\n"])
    assert a.raw.startswith(b"HTTP/1.1 413") and b"100 Continue" not in a.raw
    assert a.error()["code"] == "body_too_large"


def test_100_continue_for_a_body_within_the_cap(server):
    body = json.dumps({"prompt": "x", "seed": 2}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(POST_HEAD + b"Content-Length: %d\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
                     % len(body))
        assert sock.recv(65536).startswith(b"HTTP/1.1 100")
        sock.sendall(body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("raw,says", [
    (b"[" * 1000 + b"]" * 1000, "1000 levels deep"),
    (b'{"prompt": ' + b"[" * 40 + b"]" * 40 + b"}", "41 levels deep"),
])
def test_deeply_nested_json_is_400(server, raw, says, caplog):
    resp = call(server, "POST", GENERATIONS, raw=raw, headers={"Content-Type": "application/json"})
    assert resp.status == 400 and resp.error()["code"] == "invalid_json" and says in resp.error()["message"]
    _no_tracebacks(caplog)


def test_brackets_inside_strings_do_not_count(server):
    resp = call(server, "POST", GENERATIONS, {"prompt": "[[[[" * 100 + "{{{{" * 100, "seed": 1})
    assert resp.status == 200, resp.body[:300]


# ---------------------------------------------------------------------------------------------------- HEAD
@pytest.mark.parametrize("path", ["/", "/health", "/healthz", "/v1/models", "/v1/models/bitdance-t2i", "/metrics"])
def test_head_on_get_routes(server, path):
    head = call(server, "HEAD", path)
    assert head.status == 200 and head.body == b""
    get = call(server, "GET", path)
    assert head.headers["Content-Type"] == get.headers["Content-Type"]
    if path != "/metrics":  # the metrics change between the two calls
        assert int(head.headers["Content-Length"]) == len(get.body)


def test_head_on_a_request_and_its_events(server):
    job = call(server, "POST", GENERATIONS + "/async", {"prompt": "x"}).json()
    assert server.jobs.get(job["id"]).handle.wait(10)
    head = call(server, "HEAD", job["url"])
    assert head.status == 200 and head.body == b"" and int(head.headers["Content-Length"]) > 0
    events = call(server, "HEAD", job["events_url"], timeout=10)
    assert events.status == 200 and events.body == b"" and events.headers["Content-Type"].startswith(
        "text/event-stream")


# ---------------------------------------------------------------------------------------------------- counting
def test_a_client_leaving_is_499_without_a_traceback(caplog):
    rt = FakeRuntime()
    with running_server(rt, default_size=(512, 512)) as server:
        rt.hold()
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        body = b'{"prompt": "x"}'
        sock.sendall(POST_HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        deadline = time.monotonic() + 10
        while not rt.submitted and time.monotonic() < deadline:
            time.sleep(0.01)
        sock.close()  # leaves while its image is being made
        half = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        half.sendall(POST_HEAD + b"Content-Length: 100\r\n\r\n{")
        time.sleep(0.2)
        half.close()  # leaves while sending its body
        while rt.submitted[0].status != "cancelled" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert rt.submitted[0].status == "cancelled" and len(rt.submitted) == 1
        while _metric(server, 'bitdance_http_requests_total{code="499"}') < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _metric(server, 'bitdance_http_requests_total{code="499"}') == 2
        assert _metric(server, 'bitdance_http_requests_total{code="500"}') == 0
        assert _metric(server, 'bitdance_generations_total{outcome="cancelled"}') == 1
    _no_tracebacks(caplog)


def test_metrics_count_each_request_once():
    rt = FakeRuntime()
    with running_server(rt, default_size=(512, 512), max_body_bytes=1024) as server:
        statuses = [call(server, "POST", GENERATIONS, {"prompt": "x"}).status,
                    call(server, "POST", GENERATIONS, {"prompt": ""}).status,
                    call(server, "GET", "/nowhere").status,
                    call(server, "DELETE", "/healthz").status,
                    call(server, "POST", GENERATIONS, raw=b"x" * 2000,
                         headers={"Content-Type": "application/json"}).status,
                    raw_exchange(server, [POST_HEAD + b"Content-Length: +1\r\n\r\n"]).status]
        conn, resp = open_stream(server, "POST", GENERATIONS, {"prompt": "x", "stream": True})
        read_events(resp)
        conn.close()
        statuses.append(resp.status)
        job = call(server, "POST", GENERATIONS + "/async", {"prompt": "x"})
        statuses.append(job.status)
        assert server.jobs.get(job.json()["id"]).handle.wait(10)
        statuses.append(call(server, "DELETE", job.json()["url"]).status)
        assert statuses == [200, 400, 404, 405, 413, 400, 200, 202, 409]
        text = call(server, "GET", "/metrics").body.decode()  # counted after its own answer
    counted = {code: float(v) for code, v in re.findall(r'^bitdance_http_requests_total\{code="(\d+)"\} (\S+)$',
                                                          text, re.M)}
    expected = {str(s): float(statuses.count(s)) for s in set(statuses)}
    assert counted == expected
    assert re.search(r'^bitdance_http_request_duration_seconds_count\{endpoint="generations"\} 4\.0$', text, re.M)
