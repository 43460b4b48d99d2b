"""The HTTP server over the real runtime of the tiny text-to-image model (P = 64: a 512x512 image is 16 AR steps) on
the CPU: a full generation, the progress stream with previews, cancel, a request failing beside a good one, and
shutdown with requests in flight; and over the tiny class-conditional model. Skipped while ``Runtime`` lacks the
serving methods."""

from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest

import bitdance_rt.http.results as http_results
from http_testing import (GENERATIONS, call, decode_png, open_stream, read_events, running_server, tiny_runtime_or_skip,
                          whole_stream)

STEPS = 2  # sampling steps per AR step: enough to exercise the head, cheap on the CPU


@pytest.fixture(scope="module")
def server(t2i64_dir, single_thread):
    runtime = tiny_runtime_or_skip(t2i64_dir)
    with running_server(runtime, default_size=(512, 512), preview_every=4, preview_max_side=128,
                        preview_budget=1.0) as s:
        yield s


def _wait(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_generation_returns_a_png_of_the_size(server):
    resp = call(server, "POST", GENERATIONS, {"prompt": "a red fox in the snow", "size": "512x512", "seed": 7,
                                              "num_sampling_steps": STEPS}, timeout=120)
    assert resp.status == 200, resp.body
    body = resp.json()
    assert body["seed"] == 7 and len(body["data"]) == 1
    image = decode_png(body["data"][0]["b64_json"])
    assert image.size == (512, 512) and image.mode == "RGB"
    assert np.asarray(image, dtype=np.float64).std() > 1.0, "a flat image: the decoder did not run"


def test_stream_gives_progress_with_previews_then_done(server):
    resp, events = whole_stream(server, "POST", GENERATIONS, {"prompt": "a lighthouse", "stream": True, "seed": 1,
                                                              "stream_events": "progress", "num_sampling_steps": STEPS},
                                timeout=120)
    assert resp.status == 200
    names = [n for n, _ in events]
    assert names[0] == "queued" and names[-1] == "done" and names.count("done") == 1, names
    progress = [d for n, d in events if n == "progress"]
    assert progress and all(p["total"] == 16 for p in progress)
    assert [p["step"] for p in progress] == sorted({p["step"] for p in progress})
    previews = [decode_png(p["preview"]) for p in progress if "preview" in p]
    assert previews and all(im.size == (128, 128) for im in previews)
    assert decode_png(events[-1][1]["data"][0]["b64_json"]).size == (512, 512)


def test_delete_cancels_a_running_request(server):
    job = call(server, "POST", GENERATIONS + "/async", {"prompt": "a slow one", "num_sampling_steps": 20}).json()
    _wait(lambda: call(server, "GET", job["url"]).json()["progress"]["step"] >= 1)
    resp = call(server, "DELETE", job["url"])
    assert resp.status == 200
    _wait(lambda: call(server, "GET", job["url"]).json()["status"] == "cancelled", 30)
    events = read_events(open_stream(server, "GET", job["events_url"])[1])
    assert events[-1][0] == "error" and events[-1][1]["error"]["code"] == "request_cancelled"
    after = call(server, "POST", GENERATIONS, {"prompt": "next", "num_sampling_steps": STEPS}, timeout=120)
    assert after.status == 200, "the worker must go on after a cancel"


def test_a_failing_request_does_not_affect_a_concurrent_one(server, monkeypatch):
    """One request's answer fails inside the server (its PNG encoding raises); the other, generated in the same
    worker at the same time, is answered normally."""
    real = http_results.encode_b64
    poisoned = []

    def encode(image, *args):
        if not poisoned:
            poisoned.append(True)
            raise RuntimeError("encoder broke for this request")
        return real(image, *args)

    monkeypatch.setattr(http_results, "encode_b64", encode)
    results = {}

    def run(name: str, body: dict) -> None:
        results[name] = call(server, "POST", GENERATIONS, body, timeout=120)

    threads = [threading.Thread(target=run, args=(k, {"prompt": k, "seed": 3, "num_sampling_steps": STEPS}))
               for k in ("first", "second")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    statuses = sorted(r.status for r in results.values())
    assert statuses == [200, 500], {k: (r.status, r.body[:200]) for k, r in results.items()}
    good = next(r for r in results.values() if r.status == 200)
    assert decode_png(good.json()["data"][0]["b64_json"]).size == (512, 512)
    bad = next(r for r in results.values() if r.status == 500)
    assert bad.error()["code"] == "internal_error"


def test_shutdown_with_requests_in_flight(t2i64_dir, single_thread):
    runtime = tiny_runtime_or_skip(t2i64_dir)
    with running_server(runtime, default_size=(512, 512)) as server:
        results = {}
        sync = threading.Thread(target=lambda: results.setdefault("sync", call(
            server, "POST", GENERATIONS, {"prompt": "x", "num_sampling_steps": 20}, timeout=120)))
        sync.start()
        conn, resp = open_stream(server, "POST", GENERATIONS, {"prompt": "y", "stream": True,
                                                               "stream_events": "progress",
                                                               "num_sampling_steps": 20}, timeout=120)
        _wait(lambda: len(server.jobs.active()) == 2)
        server.shutdown(cancel_active=True, timeout=60)
        sync.join(60)
        events = read_events(resp)
        conn.close()
    assert results["sync"].status == 503 and results["sync"].error()["code"] == "request_cancelled"
    assert events[-1][0] == "error" and events[-1][1]["error"]["code"] == "request_cancelled"


def test_class_conditional_model(c2i16_files, single_thread):
    """The tiny class-conditional model (256x256 only): a generation by class id, and a request the runtime refuses
    because it can never fit ``max_batch`` (4 guided images = 8 rows > 4) is a 400 with the runtime's reason."""
    model, tokenizer = c2i16_files
    runtime = tiny_runtime_or_skip(model, max_batch=4, tokenizer_path=tokenizer)
    with running_server(runtime) as server:
        health = call(server, "GET", "/healthz").json()
        assert health["family"] == "c2i" and health["sizes"] == ["256x256"]
        resp = call(server, "POST", GENERATIONS, {"class_label": 207, "n": 2, "seed": 4, "num_sampling_steps": STEPS},
                    timeout=120)
        assert resp.status == 200, resp.body
        assert [decode_png(d["b64_json"]).size for d in resp.json()["data"]] == [(256, 256)] * 2
        refused = call(server, "POST", GENERATIONS, {"class_label": 207, "n": 4})
        assert refused.status == 400 and refused.error()["code"] == "invalid_request"
        assert "max_batch" in refused.error()["message"]
        assert call(server, "POST", GENERATIONS, {"prompt": "a dog"}).error()["param"] == "prompt"


def test_healthz_max_n_is_what_a_request_can_get(server):
    """max_batch 4 rows: two guided images (two rows each) per request, four unguided; n = 3 with guidance is
    refused by the runtime with its reason."""
    health = call(server, "GET", "/healthz").json()
    assert health["max_n"] == 2 and health["max_n_unguided"] == 4
    refused = call(server, "POST", GENERATIONS, {"prompt": "x", "n": 3})
    assert refused.status == 400 and refused.error()["code"] == "invalid_request"
    assert "max_batch is 4" in refused.error()["message"]


def _metric(text: str, name: str) -> float:
    return float(re.search(rf"^{re.escape(name)} (\S+)$", text, re.M).group(1))


def test_a_stream_beside_a_normal_request(t2i64_dir, single_thread):
    """A progress stream asking for a preview at every AR step runs beside a normal request: both are answered,
    and the previews stay within the budget (their time <= 5 % of the elapsed time, plus one preview), instead of
    one full decode per step under the device lock (issue 15: 3.8x slower for the other request).
    ``bench/preview_cost.py`` measures the cost."""
    runtime = tiny_runtime_or_skip(t2i64_dir)
    with running_server(runtime, default_size=(512, 512), preview_every=1, preview_budget=0.05) as server:
        start = time.monotonic()
        streamed = {}

        def follow() -> None:
            conn, resp = open_stream(server, "POST", GENERATIONS, {"prompt": "streamed", "stream": True, "seed": 1,
                                                                   "stream_events": "progress",
                                                                   "num_sampling_steps": STEPS}, timeout=300)
            streamed["events"] = read_events(resp)
            conn.close()

        thread = threading.Thread(target=follow)
        thread.start()
        normal = call(server, "POST", GENERATIONS, {"prompt": "normal", "seed": 2, "num_sampling_steps": STEPS},
                      timeout=300)
        thread.join(300)
        elapsed = time.monotonic() - start
        text = call(server, "GET", "/metrics").body.decode()
    assert normal.status == 200 and decode_png(normal.json()["data"][0]["b64_json"]).size == (512, 512)
    events = streamed["events"]
    assert events[-1][0] == "done" and decode_png(events[-1][1]["data"][0]["b64_json"]).size == (512, 512)
    progress = [d for n, d in events if n == "progress"]
    previews = [d for d in progress if "preview" in d]
    made, spent = _metric(text, "bitdance_previews_total"), _metric(text, "bitdance_preview_seconds_total")
    assert len(previews) == made >= 1 and len(progress) > made
    assert spent <= 0.05 * elapsed + spent / made, (spent, made, elapsed)
