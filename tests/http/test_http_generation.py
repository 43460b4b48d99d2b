"""The HTTP server's successful paths and lifecycle against the fake runtime: synchronous, streamed and
asynchronous generations, the progress events and their previews, cancel, health, metrics, the page, shutdown."""

from __future__ import annotations

import http.client
import json
import re
import threading
import time

import numpy as np
import pytest

from fake_runtime import FakeRuntime
from http_testing import (GENERATIONS, call, decode_image, decode_png, open_stream, read_events, running_server,
                          whole_stream)


@pytest.fixture(scope="module")
def server():
    with running_server(FakeRuntime(step_time=0.002), default_size=(512, 512), preview_every=4,
                        preview_max_side=128, preview_budget=1.0) as s:
        yield s


def test_sync_generation_returns_pngs_of_the_size(server):
    resp = call(server, "POST", GENERATIONS, {"prompt": "a red fox", "n": 3, "size": "1024x256", "seed": 11,
                                              "response_format": "b64_json", "model": "any", "user": "u"})
    assert resp.status == 200, resp.body
    body = resp.json()
    assert abs(body["created"] - time.time()) < 60 and body["seed"] == 11 and body["id"] == resp.headers["X-Request-Id"]
    images = [decode_png(d["b64_json"]) for d in body["data"]]
    assert [im.size for im in images] == [(1024, 256)] * 3  # size is WIDTHxHEIGHT
    expected = np.random.default_rng(11).integers(0, 256, size=(3, 256, 1024, 3), dtype=np.uint8)
    assert np.array_equal(np.stack([np.asarray(im) for im in images]), expected), "PNG round trip lost pixels"
    request = server.runtime.requests[-1]
    assert request.height == 256 and request.width == 1024 and request.num_images == 3


def test_defaults(server):
    resp = call(server, "POST", GENERATIONS, {"prompt": "a red fox"})
    assert resp.status == 200
    assert [decode_png(d["b64_json"]).size for d in resp.json()["data"]] == [(512, 512)]
    request = server.runtime.requests[-1]
    assert request.num_images == 1 and request.seed is None and request.num_sampling_steps is None


def _check_progress(events, total: int, every: int, max_side: int) -> None:
    progress = [data for name, data in events if name == "progress"]
    steps = [p["step"] for p in progress]
    assert steps == sorted(set(steps)) and steps[-1] <= total and all(p["total"] == total for p in progress)
    previews = [p for p in progress if "preview" in p]
    assert previews, "no preview in the stream"
    assert all(b - a >= every for a, b in zip([0] + [p["step"] for p in previews], [p["step"] for p in previews]))
    for p in previews:
        assert max(decode_png(p["preview"]).size) <= max_side


def test_async_then_events_then_status(server):
    created = call(server, "POST", GENERATIONS + "/async", {"prompt": "a red fox", "n": 2, "seed": 3})
    assert created.status == 202, created.body
    job = created.json()
    assert re.fullmatch(r"gen-[0-9a-f]{16}", job["id"]) and created.headers["Location"] == job["url"]
    assert job["events_url"] == f"{GENERATIONS}/{job['id']}/events"
    resp, events = whole_stream(server, "GET", job["events_url"])
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    names = [n for n, _ in events]
    assert names[0] == "queued" and names[-1] == "done" and names.count("done") == 1, names
    _check_progress(events, total=16, every=4, max_side=128)
    done = events[-1][1]
    assert [decode_png(d["b64_json"]).size for d in done["data"]] == [(512, 512)] * 2
    status = call(server, "GET", job["url"]).json()
    assert status["status"] == "done" and status["progress"] == {"step": 16, "total": 16}
    assert status["data"] == done["data"]
    again = read_events(open_stream(server, "GET", job["events_url"])[1])  # a finished job's stream ends at once
    assert [n for n, _ in again] == ["queued", "done"]


def test_progress_events_on_the_openai_endpoint(server):
    resp, events = whole_stream(server, "POST", GENERATIONS, {"prompt": "a red fox", "stream": True, "size": "512x512",
                                                              "stream_events": "progress"})
    assert resp.status == 200
    assert [n for n, _ in events][-1] == "done"
    _check_progress(events, total=16, every=4, max_side=128)
    assert decode_png(events[-1][1]["data"][0]["b64_json"]).size == (512, 512)


@pytest.fixture(scope="module")
def slow_server():
    """Steps slow enough (50 ms) that every partial image is made before the request ends."""
    with running_server(FakeRuntime(step_time=0.05), default_size=(512, 512), preview_budget=1.0) as s:
        yield s


@pytest.mark.parametrize("partials", [0, 2, 3])
def test_openai_stream_events(slow_server, partials):
    """OpenAI's image streaming: ``partial_images`` partial images (full size, indexed 0..), then one completed
    event per image, each with the image's seed; ``output_format`` applies to both."""
    resp, events = whole_stream(slow_server, "POST", GENERATIONS, {"prompt": "a red fox", "stream": True, "n": 2,
                                                                   "seed": 9, "partial_images": partials,
                                                                   "output_format": "jpeg"})
    assert resp.status == 200 and resp.headers["X-Request-Id"].startswith("gen-")
    names = [n for n, _ in events]
    assert names == ["image_generation.partial_image"] * partials + ["image_generation.completed"] * 2, names
    for i, (_, data) in enumerate(events[:partials]):
        assert data["type"] == "image_generation.partial_image" and data["partial_image_index"] == i
        assert data["output_format"] == "jpeg" and data["size"] == "512x512"
        assert decode_image(data["b64_json"], "JPEG").size == (512, 512)
    completed = [data for _, data in events[partials:]]
    assert [d["seed"] for d in completed] == [9, 10]
    for d in completed:
        assert d["type"] == "image_generation.completed" and isinstance(d["created_at"], int)
        assert decode_image(d["b64_json"], "JPEG").size == (512, 512)


@pytest.mark.parametrize("fmt,pil,compression", [("png", "PNG", None), ("jpeg", "JPEG", 40), ("webp", "WEBP", 80)])
def test_output_format_and_compression(server, fmt, pil, compression):
    body = {"prompt": "x", "seed": 1, "output_format": fmt, "quality": "high", "user": "u-1", "model": "any"}
    if compression is not None:
        body["output_compression"] = compression
    resp = call(server, "POST", GENERATIONS, body)
    assert resp.status == 200, resp.body
    out = resp.json()
    assert out["output_format"] == fmt and out["size"] == "512x512"
    image = decode_image(out["data"][0]["b64_json"], pil)
    assert image.size == (512, 512)
    if fmt == "jpeg":  # a lower quality makes a smaller file than the default (100)
        default = call(server, "POST", GENERATIONS, {"prompt": "x", "seed": 1, "output_format": "jpeg"}).json()
        assert len(out["data"][0]["b64_json"]) < len(default["data"][0]["b64_json"])


def test_delete_cancels_and_the_stream_says_so():
    rt = FakeRuntime()
    with running_server(rt, default_size=(512, 512)) as server:
        rt.hold()
        job = call(server, "POST", GENERATIONS + "/async", {"prompt": "x"}).json()
        conn, resp = open_stream(server, "GET", job["events_url"])
        cancelled = call(server, "DELETE", job["url"])
        assert cancelled.status == 200 and cancelled.json()["status"] == "cancelled"
        events = read_events(resp)
        conn.close()
        assert events[-1][0] == "error" and events[-1][1]["error"]["code"] == "request_cancelled"
        assert call(server, "GET", job["url"]).json()["status"] == "cancelled"
        assert rt.submitted[0].status == "cancelled"


@pytest.mark.parametrize("style", ["progress", "openai"])
def test_leaving_a_stream_cancels_only_that_stream_request(style):
    rt = FakeRuntime(step_time=0.02)
    with running_server(rt, default_size=(512, 512)) as server:
        kept = call(server, "POST", GENERATIONS + "/async", {"prompt": "kept"}).json()
        conn, resp = open_stream(server, "POST", GENERATIONS, {"prompt": "left", "stream": True,
                                                               "stream_events": style})
        if style == "progress":
            assert resp.readline().startswith(b"event: queued")
        resp.close()  # leave after the headers (openai: before any event)
        conn.close()
        deadline = time.monotonic() + 10
        while rt.submitted[1].status != "cancelled" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert rt.submitted[1].status == "cancelled"
        assert server.jobs.get(kept["id"]).handle.wait(10) and rt.submitted[0].status == "done"


def test_leaving_a_sync_request_cancels_it():
    rt = FakeRuntime()
    with running_server(rt, default_size=(512, 512)) as server:
        rt.hold()
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("POST", GENERATIONS, body=json.dumps({"prompt": "x"}),
                     headers={"Content-Type": "application/json"})
        deadline = time.monotonic() + 10
        while not rt.submitted and time.monotonic() < deadline:
            time.sleep(0.01)
        conn.close()
        while rt.submitted[0].status != "cancelled" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert rt.submitted[0].status == "cancelled"


def test_healthz_and_page(server):
    health = call(server, "GET", "/healthz")
    assert health.status == 200
    info = health.json()
    assert info["status"] == "ok" and info["family"] == "t2i" and info["default_size"] == "512x512"
    assert "1024x1024" in info["sizes"] and "512x512" in info["sizes"] and info["max_n"] == 4
    page = call(server, "GET", "/?prompt=x&autostart=1")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    assert b"/v1/images/generations/async" in page.body and b'id="generate"' in page.body


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m, f"{name} missing"
    return float(m.group(1))


def test_metrics_in_prometheus_text_format():
    rt = FakeRuntime(step_time=0.002)
    with running_server(rt, default_size=(512, 512)) as server:
        assert call(server, "POST", GENERATIONS, {"prompt": "x", "n": 2}).status == 200
        assert call(server, "POST", GENERATIONS, {"prompt": "x", "n": 9}).status == 400
        assert call(server, "GET", "/nowhere").status == 404
        resp = call(server, "GET", "/metrics")
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain; version=")
        text = resp.body.decode()
    for line in text.splitlines():  # every line is a comment or `name{labels} value`
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or \
            re.fullmatch(r'[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? (NaN|[+-]Inf|-?[0-9.e+-]+)', line), line
    for name in ("bitdance_queue_length", "bitdance_active_requests", "bitdance_images_total",
                 "bitdance_images_per_second", "bitdance_step_latency_seconds"):
        assert f"# TYPE {name} " in text
    assert _metric(text, "bitdance_images_total") == 2
    assert _metric(text, "bitdance_images_per_second") > 0 and _metric(text, "bitdance_step_latency_seconds") > 0
    assert _metric(text, 'bitdance_http_requests_total{code="200"}') == 1
    assert _metric(text, 'bitdance_http_requests_total{code="400"}') == 1
    assert _metric(text, 'bitdance_http_requests_total{code="404"}') == 1
    assert _metric(text, 'bitdance_generations_total{outcome="done"}') == 1
    assert _metric(text, "bitdance_server_stopping") == 0


def test_shutdown_cancels_active_requests_and_answers_them():
    rt = FakeRuntime()
    with running_server(rt, default_size=(512, 512)) as server:
        rt.hold()
        results = {}
        sync = threading.Thread(target=lambda: results.setdefault("sync", call(server, "POST", GENERATIONS,
                                                                                {"prompt": "x"})))
        sync.start()
        conn, resp = open_stream(server, "POST", GENERATIONS, {"prompt": "y", "stream": True})
        deadline = time.monotonic() + 10
        while len(rt.submitted) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.shutdown(cancel_active=True, timeout=10)
        sync.join(10)
        events = read_events(resp)
        conn.close()
        assert results["sync"].status == 503 and results["sync"].error()["code"] == "request_cancelled"
        assert events[-1][0] == "error" and "shutting down" in events[-1][1]["error"]["message"]
        assert all(h.status == "cancelled" for h in rt.submitted)
        with pytest.raises(OSError):
            call(server, "GET", "/healthz", timeout=2)


def test_shutdown_finishes_active_requests_when_asked():
    rt = FakeRuntime(step_time=0.01)
    with running_server(rt, default_size=(512, 512)) as server:
        results = {}
        sync = threading.Thread(target=lambda: results.setdefault("r", call(server, "POST", GENERATIONS,
                                                                             {"prompt": "x"})))
        sync.start()
        deadline = time.monotonic() + 10
        while not rt.submitted and time.monotonic() < deadline:
            time.sleep(0.01)
        server.shutdown(cancel_active=False, timeout=30)
        sync.join(10)
        assert results["r"].status == 200 and rt.submitted[0].status == "done"


def test_construction_and_unstarted_shutdown():
    from bitdance_rt.errors import InvalidRequestError
    from bitdance_rt.http.server import ImageServer, ServerConfig

    with pytest.raises(InvalidRequestError, match="default size 500x500"):
        ImageServer(FakeRuntime(), "127.0.0.1", 0, ServerConfig(default_size=(500, 500)))
    server = ImageServer(FakeRuntime(family="c2i", parallel=16), "127.0.0.1", 0)
    assert server.info["sizes"] == ["256x256"] and server.info["default_size"] == "256x256"
    server.shutdown()  # never started: returns at once
    server.shutdown()


def test_a_request_deadline_cancels_it_with_504():
    rt = FakeRuntime()
    with running_server(rt, default_size=(512, 512)) as server:
        rt.hold()
        start = time.monotonic()
        resp = call(server, "POST", GENERATIONS, {"prompt": "x", "timeout": 0.5})
        elapsed = time.monotonic() - start
        assert resp.status == 504, resp.body
        err = resp.error()
        assert err["code"] == "deadline_exceeded" and "deadline of 0.5 s" in err["message"]
        assert 0.4 < elapsed < 10 and rt.submitted[0].status == "cancelled"
        conn, stream = open_stream(server, "POST", GENERATIONS, {"prompt": "x", "stream": True, "timeout": 0.3})
        events = read_events(stream)
        conn.close()
        assert [n for n, _ in events] == ["error"] and events[0][1]["error"]["code"] == "deadline_exceeded"
        text = call(server, "GET", "/metrics").body.decode()
        assert _metric(text, 'bitdance_generations_total{outcome="expired"}') == 2
        assert _metric(text, 'bitdance_generations_total{outcome="cancelled"}') == 0


def test_the_server_default_deadline_and_a_shorter_own_one():
    rt = FakeRuntime()
    with running_server(rt, default_size=(512, 512), request_timeout_s=0.6) as server:
        rt.hold()
        assert call(server, "GET", "/healthz").json()["request_timeout"] == 0.6
        longer = call(server, "POST", GENERATIONS + "/async", {"prompt": "x", "timeout": 100}).json()
        shorter = call(server, "POST", GENERATIONS + "/async", {"prompt": "x", "timeout": 0.2}).json()
        for job in (longer, shorter):
            assert server.jobs.get(job["id"]).handle.wait(10)
        ended = {j["id"]: server.jobs.get(j["id"]).finished_at for j in (longer, shorter)}
        assert ended[shorter["id"]] < ended[longer["id"]]  # its own 0.2 s, before the server's 0.6 s
        status = call(server, "GET", longer["url"]).json()
        assert status["status"] == "cancelled" and status["error"]["code"] == "deadline_exceeded"
        assert "deadline of 0.6 s" in status["error"]["message"]
        assert "deadline of 0.2 s" in call(server, "GET", shorter["url"]).json()["error"]["message"]


def test_finished_async_requests_expire_without_new_submissions():
    with running_server(FakeRuntime(), default_size=(512, 512), finished_ttl_s=0.4) as server:
        job = call(server, "POST", GENERATIONS + "/async", {"prompt": "x"}).json()
        assert server.jobs.get(job["id"]).handle.wait(10)
        assert call(server, "GET", job["url"]).json()["status"] == "done"
        deadline = time.monotonic() + 10
        while server.jobs.get(job["id"]) is not None and time.monotonic() < deadline:
            time.sleep(0.05)  # nothing is submitted meanwhile: the periodic sweep drops it
        resp = call(server, "GET", job["url"])
        assert resp.status == 404 and resp.error()["param"] == "id"
