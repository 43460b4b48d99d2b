"""What a progress stream's previews cost the other requests.

Run from the repository root::

    python bench/preview_cost.py --tiny [--repeats 3] [--steps 2] [--json out.json]
    python bench/preview_cost.py --model models/BitDance-14B-64x --size 1024x1024 --device cuda

A *normal* request (``POST /v1/images/generations``) runs while a *neighbour*, a progress stream
(``"stream_events": "progress"``), runs beside it in the same batch; the normal request's latency is measured from
the client. Three servers, ``--repeats`` rounds each, after one warm-up request:

- ``no-previews``: ``--preview-every 0``: the stream gets progress events only: the baseline;
- ``budgeted``: a preview asked for at every AR step, under the preview budget (``--budget``, default 0.05);
- ``unbudgeted``: the same with the budget off (a preview at every step, as before issue 15).

The requests and their paths are the same in every case, so the difference is the previews' work. Reported: the
normal request's mean latency per case, the cost of previews (``case / no-previews - 1``; the goal: at most 10 %),
and the previews made and the time they took (from ``/metrics``).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

PATH = "/v1/images/generations"


def _post(port: int, body: dict[str, Any], timeout: float = 900.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", PATH, body=json.dumps(body), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _metrics(port: int) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return {name: float(value) for name, value in re.findall(r"^(bitdance_preview\w*_total) (\S+)$", text, re.M)}


def one_round(port: int, normal: dict[str, Any], neighbour: dict[str, Any]) -> float:
    """The normal request's latency (s) with ``neighbour`` sent at the same moment."""
    failures: list[str] = []

    def run_neighbour() -> None:
        status, raw = _post(port, neighbour)
        if status != 200:
            failures.append(f"neighbour: HTTP {status} {raw[:200]!r}")

    thread = threading.Thread(target=run_neighbour)
    thread.start()
    start = time.perf_counter()
    status, raw = _post(port, normal)
    latency = time.perf_counter() - start
    thread.join()
    if status != 200:
        failures.append(f"normal: HTTP {status} {raw[:200]!r}")
    if failures:
        raise RuntimeError("; ".join(failures))
    return latency


@contextlib.contextmanager
def serving(args: argparse.Namespace, preview_every: int, budget: float) -> Iterator[int]:
    import torch

    from bitdance_rt.http.server import ImageServer, ServerConfig
    from bitdance_rt.runtime import Runtime

    with tempfile.TemporaryDirectory(prefix="bitdance-preview-cost-") as tmp:
        if args.tiny:
            from bitdance_rt.tiny_models import write_tiny_t2i

            torch.set_num_threads(1)
            model = write_tiny_t2i(Path(tmp) / "tiny-t2i", parallel_num=64, seed=0)
            runtime = Runtime.from_pretrained(model, device="cpu", dtype=torch.float32, max_batch=4)
        else:
            runtime = Runtime.from_pretrained(args.model, device=args.device, max_batch=args.max_batch)
        size = tuple(int(v) for v in reversed(args.size.split("x")))
        config = ServerConfig(default_size=size, preview_every=preview_every, preview_budget=budget)
        server = ImageServer(runtime, "127.0.0.1", 0, config).start()
        try:
            yield server.port
        finally:
            server.shutdown(cancel_active=True, timeout=30)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    base = {"prompt": "a lighthouse at dusk", "size": args.size}
    if args.steps is not None:
        base["num_sampling_steps"] = args.steps
    stream = {**base, "prompt": "a red fox in the snow", "stream": True, "stream_events": "progress"}
    cases = {"no-previews": (0, args.budget), "budgeted": (1, args.budget), "unbudgeted": (1, 1.0)}
    report: dict[str, Any] = {"size": args.size, "steps": args.steps, "repeats": args.repeats, "budget": args.budget,
                              "cases": {}}
    for name, (preview_every, budget) in cases.items():
        with serving(args, preview_every, budget) as port:
            status, raw = _post(port, {**base, "seed": 0})  # warm-up: the engine, and the decode time measured
            if status != 200:
                raise RuntimeError(f"warm-up: HTTP {status} {raw[:200]!r}")
            before = _metrics(port)
            latencies = [one_round(port, {**base, "seed": 10 + r}, {**stream, "seed": 20 + r})
                         for r in range(args.repeats)]
            after = _metrics(port)
        made = after.get("bitdance_previews_total", 0) - before.get("bitdance_previews_total", 0)
        spent = after.get("bitdance_preview_seconds_total", 0) - before.get("bitdance_preview_seconds_total", 0)
        report["cases"][name] = {"latencies_s": latencies, "mean_s": statistics.mean(latencies),
                                 "previews": made, "preview_s": spent}
        print(f"{name:>11}: normal request {statistics.mean(latencies):.2f} s "
              f"({', '.join(f'{x:.2f}' for x in latencies)}); previews {made:.0f} taking {spent:.2f} s", flush=True)
    plain = report["cases"]["no-previews"]["mean_s"]
    for name in ("budgeted", "unbudgeted"):
        report["cases"][name]["cost"] = report["cases"][name]["mean_s"] / plain - 1
        print(f"cost of {name} previews to the other request: {100 * report['cases'][name]['cost']:+.1f} %")
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="What a progress stream's previews cost the other requests "
                                            "(see the module docstring).")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--tiny", action="store_true", help="the tiny random-weight model on the CPU")
    where.add_argument("--model", help="a model directory or checkpoint")
    p.add_argument("--device")
    p.add_argument("--max-batch", type=int, default=4)
    p.add_argument("--size", default="512x512", help="WIDTHxHEIGHT")
    p.add_argument("--steps", type=int, default=None, help="num_sampling_steps (default: 2 with --tiny)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--budget", type=float, default=0.05, help="the server's preview budget (default 0.05)")
    p.add_argument("--json", help="also write the report to this JSON file")
    args = p.parse_args(argv)
    if args.tiny and args.steps is None:
        args.steps = 2
    report = measure(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
