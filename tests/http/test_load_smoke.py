"""``bench/load_test.py`` run small: 4 clients x 3 requests (at most 60 s of sending) against the tiny-model server
on loopback must report every request answered, none failed or lost, and the server's histogram counting them all.
Its bookkeeping is checked against the fake runtime: failures and lost requests are counted and fail the run;
client percentiles are nearest-rank, the server's interpolated within its buckets as Prometheus does."""

from __future__ import annotations

import json
import math
import socket
import sys
from pathlib import Path

import pytest

from fake_runtime import FAIL_MARKER, FakeRuntime
from http_testing import SERVING_METHODS, running_server

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import load_test  # noqa: E402

BODY = {"prompt": "a red fox", "size": "512x512", "n": 1, "response_format": "b64_json"}


def test_tiny_model_load_smoke(single_thread, tmp_path, capsys):
    from bitdance_rt.runtime import Runtime

    if not all(hasattr(Runtime, m) for m in SERVING_METHODS):
        pytest.skip("Runtime has no serving methods yet (the serving core is not in this tree)")
    out = tmp_path / "load.json"
    code = load_test.main(["--tiny", "--clients", "4", "--requests", "12", "--duration", "60", "--steps", "1",
                           "--timeout", "120", "--json", str(out)])
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert code == 0, printed
    assert report["sent"] == report["ok"] == 12 and report["failed"] == 0 and report["lost"] == 0
    assert report["images"] == 12 and report["images_per_s"] > 0
    assert 0 < report["latency_p50_s"] <= report["latency_p99_s"] <= report["latency_max_s"]
    assert report["server_counted"] == 12 and 0 < report["server_latency_p50_s"] <= report["server_latency_p99_s"]
    assert 0 < report["server_generation_p50_s"] <= report["server_generation_p99_s"]
    assert "images/s" in printed and "p99" in printed and "server histogram" in printed


def test_counts_against_the_fake():
    with running_server(FakeRuntime(step_time=0.001), default_size=(512, 512)) as server:
        report = load_test.run_load(server.url, BODY, clients=3, max_requests=9, duration_s=30, timeout_s=30)
        assert report.passed and report.sent == report.ok == 9 and report.images == 9
        assert report.latency_p50_s <= report.latency_p99_s <= report.latency_max_s
        assert report.server_counted == 9 and report.server_latency_p50_s <= report.server_latency_p99_s

        report = load_test.run_load(server.url, {**BODY, "n": 2}, clients=2, max_requests=3, duration_s=30)
        assert report.passed and report.images == 6

        failing = load_test.run_load(server.url, {**BODY, "prompt": FAIL_MARKER}, clients=2, max_requests=4,
                                     duration_s=30)
        assert not failing.passed and failing.failed == 4 and failing.ok == 0 and failing.lost == 0
        assert failing.reasons and "HTTP 500" in failing.reasons[0]


def test_lost_requests_are_counted():
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    report = load_test.run_load(f"http://127.0.0.1:{port}", BODY, clients=2, max_requests=4, duration_s=30,
                                timeout_s=5)
    assert not report.passed and report.lost == 4 and report.sent == 4 and report.ok == 0
    assert math.isnan(report.latency_p50_s)


def test_request_bound_by_time():
    with running_server(FakeRuntime(step_time=0.001), default_size=(512, 512)) as server:
        report = load_test.run_load(server.url, BODY, clients=2, max_requests=10 ** 6, duration_s=0.5)
    assert report.passed and 0 < report.sent < 10 ** 6


def test_histogram_quantile_interpolates_like_prometheus():
    buckets = {0.1: 0.0, 0.5: 10.0, 1.0: 30.0, math.inf: 40.0}  # cumulative
    assert load_test.histogram_quantile(0.25, buckets) == pytest.approx(0.5)  # rank 10: the top of (0.1, 0.5]
    assert load_test.histogram_quantile(0.5, buckets) == pytest.approx(0.75)  # rank 20: halfway in (0.5, 1.0]
    assert load_test.histogram_quantile(0.99, buckets) == 1.0  # in the +Inf bucket: the top finite bound
    assert math.isnan(load_test.histogram_quantile(0.5, {0.1: 0.0, math.inf: 0.0}))


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert load_test.percentile(values, 0.5) == 50.0 and load_test.percentile(values, 0.99) == 99.0
    assert load_test.percentile([3.0], 0.99) == 3.0 and math.isnan(load_test.percentile([], 0.5))
