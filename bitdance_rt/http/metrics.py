"""``GET /metrics``: the server's own series and the runtime's ``stats()``, through ``prometheus_client`` (one registry
per server, so several servers in one process do not mix).

Series:
- ``bitdance_http_requests_total{code}``: every HTTP request, counted once when it ends, by the status it got
  (framing errors and header timeouts answered by the protocol layer included; ``499``: the client left before
  the answer was sent).
- ``bitdance_http_request_duration_seconds{endpoint}`` (histogram): from the request's arrival to the end of its
  answer (an event stream: to its end). ``endpoint``: ``generations``, ``generations_async``, ``job``, ``events``,
  ``health``, ``metrics``, ``models``, ``page``, ``other``.
- ``bitdance_generation_duration_seconds`` (histogram): submission to the end, for requests that finished;
  ``bitdance_queue_wait_seconds`` (histogram): their time in the runtime's queue.
- ``bitdance_generations_total{outcome}``: requests that ended: ``done``, ``failed``, ``cancelled``, ``expired``
  (cancelled at their deadline).
- ``bitdance_previews_total``, ``bitdance_preview_seconds_total``: previews made for streams and the time they took.
- ``bitdance_event_streams``, ``bitdance_http_connections``, ``bitdance_pending_requests``,
  ``bitdance_server_stopping`` (gauges).
- From the runtime: ``bitdance_queue_length``, ``bitdance_active_requests``, ``bitdance_images_total``,
  ``bitdance_images_per_second``, ``bitdance_step_latency_seconds`` (NaN when ``stats()`` fails).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

log = logging.getLogger("bitdance_rt.http")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0,
                   120.0, 180.0, 300.0, 600.0, math.inf)
OUTCOMES = ("done", "failed", "cancelled", "expired")
ENDPOINTS = ("generations", "generations_async", "job", "events", "health", "metrics", "models", "page", "other")

# (metric, kind, help, key in runtime.stats())
RUNTIME_SERIES = (
    ("bitdance_queue_length", "gauge", "Requests waiting for the worker.", "queue_length"),
    ("bitdance_active_requests", "gauge", "Requests the worker is stepping now.", "active_requests"),
    ("bitdance_images", "counter", "Images completed since the worker started.", "images_completed"),
    ("bitdance_images_per_second", "gauge", "Recent image throughput.", "images_per_second"),
    ("bitdance_step_latency_seconds", "gauge", "Latency of the worker's latest round.", "step_latency_s"),
)


def endpoint_label(path: str) -> str:
    """The ``endpoint`` label of a request path (a fixed set, so unknown paths cannot grow the series)."""
    if path == "/v1/images/generations":
        return "generations"
    if path == "/v1/images/generations/async":
        return "generations_async"
    if path.startswith("/v1/images/generations/"):
        return "events" if path.endswith("/events") else "job"
    if path in ("/health", "/healthz"):
        return "health"
    if path == "/metrics":
        return "metrics"
    if path == "/v1/models" or path.startswith("/v1/models/"):
        return "models"
    return "page" if path == "/" else "other"


class _RuntimeCollector:
    """The runtime's ``stats()`` and the server's state, read at every scrape."""

    def __init__(self, stats: Callable[[], dict[str, Any]], stopping: Callable[[], bool],
                 pending: Callable[[], int], connections: Callable[[], int]):
        self._stats, self._stopping, self._pending, self._connections = stats, stopping, pending, connections

    def collect(self):
        try:
            stats = dict(self._stats())
        except Exception:  # noqa: BLE001 - metrics must answer even when the runtime cannot
            log.exception("runtime.stats() failed")
            stats = {}
        for name, kind, help_text, key in RUNTIME_SERIES:
            value = stats.get(key)
            value = math.nan if value is None else float(value)
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            yield family(name, help_text, value=value)
        yield GaugeMetricFamily("bitdance_server_stopping", "1 while the server shuts down.",
                                value=float(self._stopping()))
        yield GaugeMetricFamily("bitdance_pending_requests", "Generation requests queued or running (the server's "
                                "count, bounded by --max-queue).", value=float(self._pending()))
        yield GaugeMetricFamily("bitdance_http_connections", "Open HTTP connections.",
                                value=float(self._connections()))


class ServerMetrics:
    def __init__(self, stats: Callable[[], dict[str, Any]], stopping: Callable[[], bool],
                 pending: Callable[[], int], connections: Callable[[], int]):
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter("bitdance_http_requests", "HTTP requests, by the status they got (499: the "
                                     "client left before the answer).", ["code"], registry=r)
        self.http_duration = Histogram("bitdance_http_request_duration_seconds", "Request arrival to the end of "
                                       "its answer, by endpoint.", ["endpoint"], buckets=LATENCY_BUCKETS,
                                       registry=r)
        self.generation_duration = Histogram("bitdance_generation_duration_seconds", "Submission to the end of "
                                             "generation requests that finished.", buckets=LATENCY_BUCKETS,
                                             registry=r)
        self.queue_wait = Histogram("bitdance_queue_wait_seconds", "Time finished requests waited in the "
                                    "runtime's queue.", buckets=LATENCY_BUCKETS, registry=r)
        self.generations = Counter("bitdance_generations", "Generation requests that ended, by outcome.",
                                   ["outcome"], registry=r)
        for outcome in OUTCOMES:
            self.generations.labels(outcome)
        self.previews = Counter("bitdance_previews", "Previews made for event streams.", registry=r)
        self.preview_seconds = Counter("bitdance_preview_seconds", "Time spent making previews.", registry=r)
        self.streams = Gauge("bitdance_event_streams", "Open event streams.", registry=r)
        r.register(_RuntimeCollector(stats, stopping, pending, connections))

    def request(self, code: int, endpoint: str, seconds: float | None) -> None:
        self.http_requests.labels(str(code)).inc()
        if seconds is not None:
            self.http_duration.labels(endpoint).observe(seconds)

    def preview_made(self, seconds: float) -> None:
        self.previews.inc()
        self.preview_seconds.inc(seconds)

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition in the format the scraper asks for (``Accept``), and its content type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
