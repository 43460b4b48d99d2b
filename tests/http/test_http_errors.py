"""Every error path of the HTTP server, against the fake runtime (no model work): status code, the OpenAI-shaped
error body (message, type, param, code), and that the server keeps serving afterwards."""

from __future__ import annotations

import http.client
import json
import threading
import time

import pytest

from bitdance_rt.http.server import ImageServer, ServerConfig
from fake_runtime import FAIL_MARKER, FakeRuntime
from http_testing import GENERATIONS, call, decode_png, running_server, whole_stream


@pytest.fixture(scope="module")
def server():
    with running_server(FakeRuntime(max_images=3), default_size=(512, 512), max_images=4, max_body_bytes=4096,
                        max_prompt_chars=50, max_sampling_steps=20) as s:
        yield s


def assert_error(resp, status: int, code: str, param: str | None = None, says: str | None = None) -> dict:
    assert resp.status == status, (resp.status, resp.body)
    err = resp.error()
    assert err["code"] == code, err
    assert err["param"] == param, err
    assert err["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    if says is not None:
        assert says in err["message"], err
    return err


@pytest.mark.parametrize("method,path,status,code,allow", [
    ("GET", "/nothing", 404, "not_found", None),
    ("POST", "/v1/images/edits", 404, "not_found", None),
    ("GET", GENERATIONS + "/gen-0123456789abcdef", 404, "not_found", None),
    ("DELETE", GENERATIONS + "/gen-0123456789abcdef", 404, "not_found", None),
    ("GET", GENERATIONS + "/gen-0123456789abcdef/events", 404, "not_found", None),
    ("GET", GENERATIONS + "/not-an-id", 404, "not_found", None),
    ("GET", GENERATIONS, 405, "method_not_allowed", "POST"),
    ("PUT", GENERATIONS, 405, "method_not_allowed", "POST"),
    ("GET", GENERATIONS + "/async", 405, "method_not_allowed", "POST"),
    ("POST", GENERATIONS + "/gen-0123456789abcdef", 405, "method_not_allowed", "DELETE, GET, HEAD"),
    ("POST", "/healthz", 405, "method_not_allowed", "GET, HEAD"),
    ("DELETE", "/metrics", 405, "method_not_allowed", "GET, HEAD"),
    ("PATCH", "/", 405, "method_not_allowed", "GET, HEAD"),
])
def test_unknown_paths_and_methods(server, method, path, status, code, allow):
    resp = call(server, method, path)
    param = "id" if "gen-0123" in path and status == 404 else None
    assert_error(resp, status, code, param)
    assert resp.headers.get("Allow") == allow


@pytest.mark.parametrize("raw,says", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'"a string"', "must be a JSON object"),
    (b'{"prompt": "x", "n": NaN}', "not valid JSON"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"", "not valid JSON"),
])
def test_bad_json(server, raw, says):
    resp = call(server, "POST", GENERATIONS, raw=raw, headers={"Content-Type": "application/json"})
    assert_error(resp, 400, "invalid_json", None, says)


@pytest.mark.parametrize("body,param,code,says", [
    ({}, "prompt", "missing_field", "required"),
    ({"prompt": "   "}, "prompt", "invalid_value", "empty"),
    ({"prompt": 7}, "prompt", "invalid_value", "string"),
    ({"prompt": "x" * 51}, "prompt", "invalid_value", "at most 50"),
    ({"prompt": "x", "negative_prompt": ["a"]}, "negative_prompt", "invalid_value", "string"),
    ({"prompt": "x", "style": "vivid"}, "style", "unknown_field", "unknown field"),
    ({"prompt": "x", "quality": "ultra"}, "quality", "invalid_value", "'hd'"),
    ({"prompt": "x", "output_format": "gif"}, "output_format", "invalid_value", "'webp'"),
    ({"prompt": "x", "output_compression": 101}, "output_compression", "invalid_value", "0..100"),
    ({"prompt": "x", "partial_images": 4}, "partial_images", "invalid_value", "0..3"),
    ({"prompt": "x", "stream_events": "all"}, "stream_events", "invalid_value", "'progress'"),
    ({"prompt": "x", "timeout": 0}, "timeout", "invalid_value", "seconds"),
    ({"prompt": "x", "timeout": "1s"}, "timeout", "invalid_value", "seconds"),
    ({"prompt": "x", "n": 0}, "n", "invalid_value", "1..4"),
    ({"prompt": "x", "n": 5}, "n", "invalid_value", "1..4"),
    ({"prompt": "x", "n": "2"}, "n", "invalid_value", "integer"),
    ({"prompt": "x", "n": True}, "n", "invalid_value", "integer"),
    ({"prompt": "x", "n": 1.0}, "n", "invalid_value", "integer"),
    ({"prompt": "x", "size": "512"}, "size", "invalid_value", "WIDTHxHEIGHT"),
    ({"prompt": "x", "size": 512}, "size", "invalid_value", "WIDTHxHEIGHT"),
    ({"prompt": "x", "size": "500x500"}, "size", "unsupported_size", "512x512"),
    ({"prompt": "x", "response_format": "url"}, "response_format", "unsupported_response_format", "b64_json"),
    ({"prompt": "x", "response_format": "png"}, "response_format", "invalid_value", "b64_json"),
    ({"prompt": "x", "seed": -1}, "seed", "invalid_value", "integer"),
    ({"prompt": "x", "seed": 2 ** 63}, "seed", "invalid_value", "at most"),
    ({"prompt": "x", "seed": 1.5}, "seed", "invalid_value", "integer"),
    ({"prompt": "x", "num_sampling_steps": 0}, "num_sampling_steps", "invalid_value", "1..20"),
    ({"prompt": "x", "num_sampling_steps": 21}, "num_sampling_steps", "invalid_value", "1..20"),
    ({"prompt": "x", "guidance_scale": "high"}, "guidance_scale", "invalid_value", "finite number"),
    ({"prompt": "x", "guidance_scale": 1e400}, None, None, None),  # JSON 1e400 parses to inf: rejected below
    ({"prompt": "x", "stream": "yes"}, "stream", "invalid_value", "true or false"),
    ({"prompt": "x", "model": 3}, "model", "invalid_value", "string"),
    ({"prompt": "x", "class_label": 3}, "class_label", "invalid_value", "class-conditional"),
])
def test_bad_fields(server, body, param, code, says):
    if param is None:  # a number too large for a float: Python's JSON reads it as inf
        resp = call(server, "POST", GENERATIONS, raw=b'{"prompt": "x", "guidance_scale": 1e400}',
                    headers={"Content-Type": "application/json"})
        assert_error(resp, 400, "invalid_value", "guidance_scale", "finite number")
        return
    assert_error(call(server, "POST", GENERATIONS, body), 400, code, param, says)
    assert_error(call(server, "POST", GENERATIONS + "/async", body), 400, code, param, says)


def test_refused_by_runtime(server):
    """The fake's memory budget is 3 images: n = 4 passes the schema, then the runtime's InvalidRequestError is
    a 400 with its message."""
    resp = call(server, "POST", GENERATIONS, {"prompt": "x", "n": 4})
    assert_error(resp, 400, "invalid_request", None, "memory budget")


@pytest.mark.parametrize("headers,status,code", [
    ({}, 415, "unsupported_media_type"),
    ({"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
    ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
])
def test_not_json(server, headers, status, code):
    resp = call(server, "POST", GENERATIONS, raw=b'{"prompt": "x"}', headers=headers)
    assert_error(resp, status, code)


def test_content_type_with_charset_is_json(server):
    resp = call(server, "POST", GENERATIONS, raw=b'{"prompt": "x", "num_sampling_steps": 1}',
                headers={"Content-Type": "Application/JSON; charset=utf-8"})
    assert resp.status == 200, resp.body


def test_body_too_large_then_connection_still_usable(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        big = json.dumps({"prompt": "x" * 5000}).encode()
        resp = call(server, "POST", GENERATIONS, raw=big, headers={"Content-Type": "application/json"}, conn=conn)
        assert_error(resp, 413, "body_too_large", None, "at most 4096")
        ok = call(server, "GET", "/healthz", conn=conn)  # the 413's body was drained: the next request parses
        assert ok.status == 200 and ok.json()["status"] == "ok"
    finally:
        conn.close()


def _raw_request(server, head: bytes, body: bytes = b"") -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.connect()
        conn.sock.sendall(head + body)
        resp = http.client.HTTPResponse(conn.sock, method="POST")
        resp.begin()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_length_required(server):
    status, body = _raw_request(server, b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\n"
                                        b"Content-Type: application/json\r\nConnection: close\r\n\r\n")
    assert status == 411 and body["error"]["code"] == "length_required"
    chunk = b'{"prompt": "x"}'
    status, body = _raw_request(server, b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\n"
                                        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
                                b"%x\r\n%s\r\n0\r\n\r\n" % (len(chunk), chunk))
    assert status == 411 and "Content-Length" in body["error"]["message"]


def test_bad_content_length(server):
    status, body = _raw_request(server, b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\n"
                                        b"Content-Type: application/json\r\nContent-Length: -5\r\n\r\n")
    assert status == 400 and body["error"]["code"] == "invalid_content_length"


def test_cancel_finished_is_409(server):
    job = call(server, "POST", GENERATIONS + "/async", {"prompt": "x"}).json()
    assert server.jobs.get(job["id"]).handle.wait(10)
    assert_error(call(server, "DELETE", job["url"]), 409, "already_finished", "id", "done")
    assert call(server, "GET", job["url"]).json()["status"] == "done"


def test_answered_sync_request_is_forgotten(server):
    done = call(server, "POST", GENERATIONS, {"prompt": "x"})
    assert done.status == 200
    assert_error(call(server, "GET", f"{GENERATIONS}/{done.headers['X-Request-Id']}"), 404, "not_found", "id",
                 "synchronous ones until answered")


def test_failed_request_is_500_and_does_not_affect_a_concurrent_one(server, caplog):
    results = {}

    def run(name: str, prompt: str) -> None:
        results[name] = call(server, "POST", GENERATIONS, {"prompt": prompt, "n": 2, "seed": 5})

    threads = [threading.Thread(target=run, args=("bad", f"a fox {FAIL_MARKER}")),
               threading.Thread(target=run, args=("good", "a fox"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    err = assert_error(results["bad"], 500, "generation_failed", None, "failed at AR step 2 of 16")
    assert "injected failure" not in err["message"] and "server log" in err["message"]  # no internal text
    bad_id = results["bad"].json()["id"]
    assert any(bad_id in r.getMessage() and "injected failure" in r.getMessage() for r in caplog.records), \
        "the cause must be in the server log, under the request id"
    good = results["good"]
    assert good.status == 200, good.body
    assert [decode_png(d["b64_json"]).size for d in good.json()["data"]] == [(512, 512), (512, 512)]
    job = call(server, "POST", GENERATIONS + "/async", {"prompt": FAIL_MARKER}).json()
    assert server.jobs.get(job["id"]).handle.wait(10)
    failed = call(server, "GET", job["url"]).json()
    assert failed["status"] == "failed" and failed["error"]["code"] == "generation_failed"


@pytest.mark.parametrize("style,first", [("progress", "queued"), ("openai", "error")])
def test_failed_stream_ends_with_error_event(server, style, first):
    resp, events = whole_stream(server, "POST", GENERATIONS, {"prompt": FAIL_MARKER, "stream": True,
                                                              "stream_events": style, "partial_images": 1})
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    names = [name for name, _ in events]
    assert names[0] == first and names[-1] == "error" and names.count("error") == 1
    assert "done" not in names and "image_generation.completed" not in names
    assert events[-1][1]["error"]["code"] == "generation_failed"


def test_internal_error_is_500_and_server_goes_on(server, monkeypatch):
    def broken(**kwargs):
        raise RuntimeError("a bug in submit")

    monkeypatch.setattr(server.runtime, "submit", broken)
    assert_error(call(server, "POST", GENERATIONS, {"prompt": "x"}), 500, "internal_error", None, "server log")
    monkeypatch.undo()
    assert call(server, "POST", GENERATIONS, {"prompt": "x", "num_sampling_steps": 1}).status == 200


def test_metrics_survive_a_broken_stats(server, monkeypatch):
    def broken():
        raise RuntimeError("stats broke")

    monkeypatch.setattr(server.runtime, "stats", broken)
    resp = call(server, "GET", "/metrics")
    assert resp.status == 200 and b"bitdance_queue_length NaN" in resp.body


def test_sync_request_cancelled_by_delete_is_409():
    rt = FakeRuntime()
    with running_server(rt, default_size=(512, 512)) as server:
        rt.hold()
        result = {}
        t = threading.Thread(target=lambda: result.setdefault("r", call(server, "POST", GENERATIONS, {"prompt": "x"})))
        t.start()
        deadline = time.monotonic() + 10
        while not rt.submitted and time.monotonic() < deadline:
            time.sleep(0.01)
        job = server.jobs.active()[0]
        cancelled = call(server, "DELETE", f"{GENERATIONS}/{job.id}")
        assert cancelled.status == 200 and cancelled.json() == {"id": job.id, "status": "cancelled"}
        t.join(10)
        assert_error(result["r"], 409, "request_cancelled", None, "cancelled")


def test_queue_full_is_429_with_retry_after_from_the_drain_rate():
    rt = FakeRuntime()
    with running_server(rt, default_size=(512, 512), max_pending=2, retry_after_fallback_s=7) as server:
        rt.hold()
        ids = [call(server, "POST", GENERATIONS + "/async", {"prompt": "x"}).json()["id"] for _ in range(2)]
        full = call(server, "POST", GENERATIONS + "/async", {"prompt": "x"})
        assert_error(full, 429, "queue_full", None, "retry in about 7 s")
        assert full.headers["Retry-After"] == "7", "nothing has drained yet: the configured fallback"
        assert len(rt.submitted) == 2, "a refused request must not reach the runtime"
        assert call(server, "DELETE", f"{GENERATIONS}/{ids[0]}").status == 200
        rt.release()
        assert server.jobs.get(ids[1]).handle.wait(10)
        rt.hold()  # two requests have ended: the drain rate is measured now
        for _ in range(2):
            assert call(server, "POST", GENERATIONS + "/async", {"prompt": "x"}).status == 202
        before = server.drain.retry_after_s(2)
        full = call(server, "POST", GENERATIONS + "/async", {"prompt": "x"})
        after = server.drain.retry_after_s(2)
        assert_error(full, 429, "queue_full")
        assert before <= int(full.headers["Retry-After"]) <= after  # ceil(pending / measured rate)
        rt.release()


def test_stopping_server_refuses_new_work_with_503():
    rt = FakeRuntime()
    server = ImageServer(rt, "127.0.0.1", 0, ServerConfig(default_size=(512, 512))).start()
    try:
        rt.hold()
        job = call(server, "POST", GENERATIONS + "/async", {"prompt": "x"}).json()["id"]
        stopper = threading.Thread(target=server.shutdown, kwargs={"cancel_active": False, "timeout": 30})
        stopper.start()
        deadline = time.monotonic() + 10
        while not server.stopping and time.monotonic() < deadline:
            time.sleep(0.01)
        assert_error(call(server, "POST", GENERATIONS, {"prompt": "x"}), 503, "server_stopping", None, "shutting down")
        health = call(server, "GET", "/healthz")
        assert health.status == 503 and health.json()["status"] == "stopping"
        assert call(server, "GET", "/health").json() == {"status": "stopping"}
        assert b"bitdance_server_stopping 1" in call(server, "GET", "/metrics").body
        rt.release()  # the active request is finished, not cancelled (cancel_active=False)
        stopper.join(30)
        assert not stopper.is_alive()
        assert rt.submitted[0].status == "done" and len(rt.submitted) == 1
        assert server.jobs.get(job).outcome == "done"
    finally:
        rt.release()
        server.shutdown()


def test_class_conditional_fields():
    with running_server(FakeRuntime(family="c2i", parallel=16)) as server:
        assert_error(call(server, "POST", GENERATIONS, {"prompt": "a dog"}), 400, "invalid_value", "prompt",
                     "class_label")
        assert_error(call(server, "POST", GENERATIONS, {}), 400, "missing_field", "class_label", "0..999")
        assert_error(call(server, "POST", GENERATIONS, {"class_label": 1000}), 400, "invalid_value", "class_label")
        assert_error(call(server, "POST", GENERATIONS, {"class_label": "7"}), 400, "invalid_value", "class_label")
        assert_error(call(server, "POST", GENERATIONS, {"class_label": 7, "size": "512x512"}), 400,
                     "unsupported_size", "size", "256x256")
        ok = call(server, "POST", GENERATIONS, {"class_label": 207, "n": 2})
        assert ok.status == 200
        assert [decode_png(d["b64_json"]).size for d in ok.json()["data"]] == [(256, 256)] * 2
