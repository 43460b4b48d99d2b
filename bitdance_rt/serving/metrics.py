"""``GET /metrics``: the server's counters and the runtime's ``stats()`` in the Prometheus text format 0.0.4.

Series: ``bitdance_queue_length``, ``bitdance_active_requests``, ``bitdance_images_total``,
``bitdance_images_per_second``, ``bitdance_step_latency_seconds`` (from the runtime's stats),
``bitdance_http_requests_total{code}`` (responses sent, by HTTP status), ``bitdance_generations_total{outcome}``
(requests that reached done / failed / cancelled), ``bitdance_event_streams`` (open SSE streams) and
``bitdance_server_stopping`` (1 while shutting down).
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# (metric, type, help, key in runtime.stats())
RUNTIME_SERIES = (
    ("bitdance_queue_length", "gauge", "Requests waiting for the worker.", "queue_length"),
    ("bitdance_active_requests", "gauge", "Requests the worker is stepping now.", "active_requests"),
    ("bitdance_images_total", "counter", "Images completed since the worker started.", "images_completed"),
    ("bitdance_images_per_second", "gauge", "Recent image throughput.", "images_per_second"),
    ("bitdance_step_latency_seconds", "gauge", "Recent latency of one AR step of the worker.", "step_latency_s"),
)


class ServerCounters:
    """Thread-safe counts of responses by status code and of finished generations by outcome."""

    def __init__(self):
        self._lock = threading.Lock()
        self.responses: Counter[int] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.streams = 0

    def response(self, code: int) -> None:
        with self._lock:
            self.responses[code] += 1

    def outcome(self, name: str) -> None:
        with self._lock:
            self.outcomes[name] += 1

    def stream_opened(self, delta: int) -> None:
        with self._lock:
            self.streams += delta

    def snapshot(self) -> tuple[dict[int, int], dict[str, int], int]:
        with self._lock:
            return dict(self.responses), dict(self.outcomes), self.streams


def _value(x: Any) -> str:
    x = float(x)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(int(x)) if x.is_integer() and abs(x) < 2 ** 53 else repr(x)


def _series(lines: list[str], name: str, kind: str, help_text: str, samples: list[tuple[str, Any]]) -> None:
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} {kind}")
    for labels, value in samples:
        lines.append(f"{name}{labels} {_value(value)}")


def render_metrics(stats: dict[str, Any], counters: ServerCounters, *, stopping: bool) -> str:
    """The exposition text; a stats key the runtime does not report is shown as NaN."""
    lines: list[str] = []
    for name, kind, help_text, key in RUNTIME_SERIES:
        value = stats.get(key)
        _series(lines, name, kind, help_text, [("", math.nan if value is None else value)])
    responses, outcomes, streams = counters.snapshot()
    _series(lines, "bitdance_http_requests_total", "counter", "HTTP responses sent, by status code.",
            [(f'{{code="{code}"}}', count) for code, count in sorted(responses.items())])
    _series(lines, "bitdance_generations_total", "counter", "Generation requests finished, by outcome.",
            [(f'{{outcome="{k}"}}', outcomes.get(k, 0)) for k in ("done", "failed", "cancelled")])
    _series(lines, "bitdance_event_streams", "gauge", "Open server-sent-event streams.", [("", streams)])
    _series(lines, "bitdance_server_stopping", "gauge", "1 while the server shuts down.", [("", int(stopping))])
    return "\n".join(lines) + "\n"
