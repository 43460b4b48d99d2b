"""Load test of the HTTP server: concurrent clients on loopback, bounded in count and time.

Run from the repository root::

    python bench/load_test.py --tiny [--clients 4] [--requests 12] [--duration 60]    # starts a tiny-model server
    python bench/load_test.py --url http://127.0.0.1:8000 --clients 8 --requests 200 --duration 300 \\
        --prompt "a red fox in the snow" --size 1024x1024 [--steps 50] [--n 1] [--json out.json]

``--clients`` threads each send ``POST /v1/images/generations`` (a new connection per request, ``b64_json``) one
after the other until ``--requests`` requests were sent in all or ``--duration`` seconds passed (a request in flight
then still finishes, up to ``--timeout``). Every request sent must get exactly one answer: a response is *ok* when it
is a 200 with ``n`` PNGs of the asked size, *failed* when it is any other response (status, body or image wrong),
and *lost* when no complete HTTP response arrived (connection refused or reset, timeout, a cut-off body).

Reported: requests sent / ok / failed / lost, images received, wall time, throughput (images/s over the whole run),
latency p50 / p99 / max of the ok requests (nearest rank), and the first few failure reasons. The exit status is 1
when any request failed or was lost, or none was sent.

The server's own view comes beside it, from its Prometheus histograms scraped before and after the run (their
difference is this run's): ``bitdance_http_request_duration_seconds{endpoint="generations"}`` (request arrival to
the end of the answer: what the client measures, less the network) and ``bitdance_generation_duration_seconds``
(submission to the end of the generation), each as p50 / p99 interpolated within the buckets as Prometheus'
``histogram_quantile`` does, and the number of requests the server counted.

``--tiny`` writes the tiny random-weight text-to-image model (P = 64) to a temporary folder, loads it on the CPU
and serves it on 127.0.0.1 (a free port) for the run; defaults then fit a CPU: 512x512, 2 sampling steps, a
continuous batch of ``--max-batch 4`` rows (two guided images).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import io
import json
import math
import re
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

PATH = "/v1/images/generations"
MAX_REASONS = 10
HTTP_HISTOGRAM = ("bitdance_http_request_duration_seconds", (("endpoint", "generations"),))
GENERATION_HISTOGRAM = ("bitdance_generation_duration_seconds", ())


@dataclass
class LoadReport:
    clients: int
    sent: int = 0
    ok: int = 0
    failed: int = 0
    lost: int = 0
    images: int = 0
    wall_s: float = 0.0
    images_per_s: float = 0.0
    latency_p50_s: float = math.nan
    latency_p99_s: float = math.nan
    latency_max_s: float = math.nan
    server_counted: float = math.nan
    server_latency_p50_s: float = math.nan
    server_latency_p99_s: float = math.nan
    server_generation_p50_s: float = math.nan
    server_generation_p99_s: float = math.nan
    reasons: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.sent > 0 and self.failed == 0 and self.lost == 0 and self.sent == self.ok

    def lines(self) -> list[str]:
        return [f"clients {self.clients}, requests sent {self.sent}: ok {self.ok}, failed {self.failed}, "
                f"lost {self.lost}",
                f"images {self.images} in {self.wall_s:.2f} s: {self.images_per_s:.3f} images/s",
                f"latency p50 {self.latency_p50_s:.3f} s, p99 {self.latency_p99_s:.3f} s, "
                f"max {self.latency_max_s:.3f} s (client)",
                f"server histogram: latency p50 {self.server_latency_p50_s:.3f} s, p99 {self.server_latency_p99_s:.3f} "
                f"s over {self.server_counted:.0f} requests; generation p50 {self.server_generation_p50_s:.3f} s, "
                f"p99 {self.server_generation_p99_s:.3f} s"] + [f"  {r}" for r in self.reasons]


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in (0, 1]) of an ascending list; NaN when empty."""
    if not sorted_values:
        return math.nan
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def histogram_quantile(q: float, buckets: dict[float, float]) -> float:
    """Prometheus' ``histogram_quantile``: ``buckets`` maps upper bounds (``math.inf`` last) to cumulative counts;
    the quantile is interpolated linearly inside the bucket that holds it (the top finite bound when it falls in
    the +Inf bucket); NaN without observations."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return math.nan
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * ((rank - below) / (count - below) if count > below else 1.0)
        lower, below = bound, count
    return lower


def scrape_histogram(url: str, name: str, labels: tuple[tuple[str, str], ...],
                     timeout: float = 30.0) -> dict[float, float] | None:
    """The cumulative buckets ``{upper bound: count}`` of the histogram series ``name`` with ``labels`` (pairs) on
    ``url``/metrics; None when the server has none."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        text = resp.read().decode("utf-8", errors="replace")
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()
    if resp.status != 200:
        return None
    buckets: dict[float, float] = {}
    for label_text, value in re.findall(rf"^{re.escape(name)}_bucket\{{(.*)\}} (\S+)$", text, re.M):
        found = dict(re.findall(r'(\w+)="([^"]*)"', label_text))
        if all(found.get(k) == v for k, v in labels):
            buckets[float(found["le"].replace("+Inf", "inf"))] = float(value)
    return buckets or None


def _difference(after: dict[float, float] | None, before: dict[float, float] | None) -> dict[float, float]:
    if after is None:
        return {}
    return {b: c - (before or {}).get(b, 0.0) for b, c in after.items()}


def _check_images(body: dict[str, Any], n: int, size: tuple[int, int]) -> str | None:
    """``None`` when ``body`` holds ``n`` PNGs of ``size`` (width, height), else why not."""
    from PIL import Image

    data = body.get("data")
    if not isinstance(data, list) or len(data) != n:
        return f"expected {n} images, got {type(data).__name__} of {len(data) if isinstance(data, list) else '?'}"
    for item in data:
        try:
            image = Image.open(io.BytesIO(base64.b64decode(item["b64_json"], validate=True)))
            image.load()
        except Exception as e:  # noqa: BLE001 - any decoding problem is a failed response
            return f"image does not decode as PNG: {e}"
        if image.format != "PNG" or image.size != size:
            return f"image is {image.format} {image.size[0]}x{image.size[1]}, expected PNG {size[0]}x{size[1]}"
    return None


class _Run:
    """Shared state of the client threads."""

    def __init__(self, url: str, body: dict[str, Any], size: tuple[int, int], max_requests: int, duration_s: float,
                 timeout_s: float, api_key: str | None = None):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.payload = json.dumps(body).encode()
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.n, self.size = body.get("n", 1), size
        self.max_requests, self.timeout_s = max_requests, timeout_s
        self.deadline = time.monotonic() + duration_s
        self.lock = threading.Lock()
        self.tickets = 0
        self.latencies: list[float] = []
        self.counts = {"sent": 0, "ok": 0, "failed": 0, "lost": 0, "images": 0}
        self.reasons: list[str] = []

    def take_ticket(self) -> bool:
        with self.lock:
            if self.tickets >= self.max_requests or time.monotonic() >= self.deadline:
                return False
            self.tickets += 1
            self.counts["sent"] += 1
            return True

    def record(self, outcome: str, latency: float, reason: str | None = None) -> None:
        with self.lock:
            self.counts[outcome] += 1
            if outcome == "ok":
                self.latencies.append(latency)
                self.counts["images"] += self.n
            elif len(self.reasons) < MAX_REASONS:
                self.reasons.append(f"{outcome}: {reason}")

    def one_request(self) -> None:
        start = time.perf_counter()
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        try:
            conn.request("POST", PATH, body=self.payload, headers=self.headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as e:
            self.record("lost", 0.0, f"{type(e).__name__}: {e}")
            return
        finally:
            conn.close()
        latency = time.perf_counter() - start
        if resp.status != 200:
            self.record("failed", latency, f"HTTP {resp.status}: {raw[:300].decode(errors='replace')}")
            return
        try:
            problem = _check_images(json.loads(raw), self.n, self.size)
        except ValueError as e:
            problem = f"response is not JSON: {e}"
        self.record("failed" if problem else "ok", latency, problem)

    def client(self) -> None:
        while self.take_ticket():
            self.one_request()


def run_load(url: str, body: dict[str, Any], *, clients: int, max_requests: int, duration_s: float,
             timeout_s: float = 600.0, api_key: str | None = None) -> LoadReport:
    """Drive ``clients`` threads against ``url`` (see the module docstring) and summarise."""
    if clients < 1 or max_requests < 1 or duration_s <= 0:
        raise ValueError(f"run_load: clients ({clients}), max_requests ({max_requests}) and duration_s "
                         f"({duration_s}) must be positive")
    width, height = (int(x) for x in body.get("size", "1024x1024").split("x"))
    run = _Run(url, body, (width, height), max_requests, duration_s, timeout_s, api_key)
    before = {h: scrape_histogram(url, *h) for h in (HTTP_HISTOGRAM, GENERATION_HISTOGRAM)}
    threads = [threading.Thread(target=run.client, name=f"load-client-{i}", daemon=True) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration_s + timeout_s + 30)
    wall = time.perf_counter() - start
    lat = sorted(run.latencies)
    c = run.counts
    unanswered = c["sent"] - c["ok"] - c["failed"] - c["lost"]  # threads still stuck past every limit
    served = _difference(scrape_histogram(url, *HTTP_HISTOGRAM), before[HTTP_HISTOGRAM])
    generated = _difference(scrape_histogram(url, *GENERATION_HISTOGRAM), before[GENERATION_HISTOGRAM])
    return LoadReport(clients=clients, sent=c["sent"], ok=c["ok"], failed=c["failed"], lost=c["lost"] + unanswered,
                      images=c["images"], wall_s=wall, images_per_s=c["images"] / wall if wall > 0 else 0.0,
                      latency_p50_s=percentile(lat, 0.5), latency_p99_s=percentile(lat, 0.99),
                      latency_max_s=lat[-1] if lat else math.nan,
                      server_counted=served.get(math.inf, math.nan),
                      server_latency_p50_s=histogram_quantile(0.5, served),
                      server_latency_p99_s=histogram_quantile(0.99, served),
                      server_generation_p50_s=histogram_quantile(0.5, generated),
                      server_generation_p99_s=histogram_quantile(0.99, generated), reasons=run.reasons)


@contextlib.contextmanager
def tiny_server(max_batch: int = 4, preview_every: int = 0) -> Iterator[str]:
    """A tiny random-weight text-to-image model served on the CPU at a free loopback port; yields its URL.
    ``max_batch``: rows of the continuous batch (every row is computed every step, so a CPU wants few)."""
    import torch

    from bitdance_rt.runtime import Runtime
    from bitdance_rt.http.server import ImageServer, ServerConfig
    from bitdance_rt.tiny_models import write_tiny_t2i

    with tempfile.TemporaryDirectory(prefix="bitdance-load-") as tmp:
        model = write_tiny_t2i(Path(tmp) / "tiny-t2i", parallel_num=64, seed=0)
        runtime = Runtime.from_pretrained(model, device="cpu", dtype=torch.float32, max_batch=max_batch)
        server = ImageServer(runtime, "127.0.0.1", 0, ServerConfig(default_size=(512, 512),
                                                                   preview_every=preview_every)).start()
        try:
            yield server.url
        finally:
            server.shutdown(cancel_active=True, timeout=30)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Load test of a bitdance-rt HTTP server (see the module docstring).")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    where.add_argument("--tiny", action="store_true", help="start a tiny-model server on the CPU for the run")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--requests", type=int, default=12, help="at most this many requests in all")
    p.add_argument("--duration", type=float, default=60.0, help="send no new request after this many seconds")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one request may take")
    p.add_argument("--prompt", default="a red fox in the snow")
    p.add_argument("--size", help="WIDTHxHEIGHT (default 1024x1024; 512x512 with --tiny)")
    p.add_argument("--n", type=int, default=1, help="images per request")
    p.add_argument("--steps", type=int, help="num_sampling_steps (default: the server's; 2 with --tiny)")
    p.add_argument("--seed", type=int)
    p.add_argument("--max-batch", type=int, default=4, help="with --tiny: rows of the server's continuous batch")
    p.add_argument("--api-key", help="sent as 'Authorization: Bearer KEY' (a server started with --api-key)")
    p.add_argument("--json", help="also write the report to this JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    body: dict[str, Any] = {"prompt": a.prompt, "n": a.n, "size": a.size or ("512x512" if a.tiny else "1024x1024"),
                            "response_format": "b64_json"}
    steps = a.steps if a.steps is not None else (2 if a.tiny else None)
    if steps is not None:
        body["num_sampling_steps"] = steps
    if a.seed is not None:
        body["seed"] = a.seed
    with (tiny_server(a.max_batch) if a.tiny else contextlib.nullcontext(a.url)) as url:
        report = run_load(url, body, clients=a.clients, max_requests=a.requests, duration_s=a.duration,
                          timeout_s=a.timeout, api_key=a.api_key)
    print("\n".join(report.lines()))
    if a.json:
        fields = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(report).items()}
        Path(a.json).write_text(json.dumps({**fields, "passed": report.passed, "request": body}, indent=2))
    if not report.passed:
        print("FAILED: some requests failed or were lost", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
