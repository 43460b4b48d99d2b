"""Concurrency: submits, results, previews and stats from several threads while a background worker owns the
stepping; ``step()`` called from two threads at once; ``stop_worker`` draining or cancelling."""

from __future__ import annotations

import threading

import pytest
import torch

from batching_helpers import C2I, TIMEOUT_S, Recorder, c2i_runtime, run_until_done

REQUESTS = [dict(class_label=c, guidance_scale=g, seed=s) for c, g, s in
            [(3, 3.0, 1), (7, 2.0, 2), (11, 3.0, 3), (13, 4.0, 4), (17, 3.0, 5), (19, 1.0, 6)]]


@pytest.fixture(scope="module")
def alone(c2i16_files, single_thread) -> dict[int, torch.Tensor]:
    """Tokens of the first two requests, each run alone."""
    out = {}
    for r in REQUESTS[:2]:
        rt = c2i_runtime(c2i16_files, max_batch=6)
        h = rt.submit(**r, **C2I)
        run_until_done(rt, h)
        out[r["class_label"]] = h.result().tokens
    return out


def test_worker_serves_submits_from_many_threads(c2i16_files, single_thread, alone):
    rt = c2i_runtime(c2i16_files, max_batch=6)
    rt.start_worker()
    rt.start_worker()  # idempotent
    results: dict[int, torch.Tensor] = {}
    listener_threads: set[str] = set()
    errors: list[BaseException] = []
    previews: list = []

    def client(req: dict) -> None:
        try:
            h = rt.submit(**req, **C2I)
            h.add_listener(lambda e: e["type"] == "progress" and listener_threads.add(threading.current_thread().name))
            if req["class_label"] == 3:
                previews.append(h.preview("np"))  # from a client thread while the worker steps
            results[req["class_label"]] = h.result(timeout=TIMEOUT_S).tokens
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(r,)) for r in REQUESTS]
    for t in threads:
        t.start()
    stats_seen = [rt.stats() for _ in range(3)]
    for t in threads:
        t.join(TIMEOUT_S)
    assert not errors and len(results) == len(REQUESTS)
    assert rt.stop_worker(timeout=TIMEOUT_S) and not rt.stats()["worker_running"]
    assert all(s["queue_length"] + s["active_requests"] <= len(REQUESTS) for s in stats_seen)
    for label, tokens in alone.items():
        assert torch.equal(results[label], tokens)
    assert listener_threads == {"bitdance-serve-worker"}
    assert len(previews) == 1 and previews[0].shape == (1, 256, 256, 3)
    final = rt.stats()
    assert final["images_completed"] == len(REQUESTS) and final["images_per_second"] > 0
    assert final["step_latency_s"] > 0 and final["mean_step_latency_s"] > 0


def test_stop_worker_drains_or_cancels(c2i16_files, single_thread):
    rt = c2i_runtime(c2i16_files, max_batch=2)  # one guided image at a time
    first = rt.submit(**REQUESTS[0], **C2I)
    second = rt.submit(**REQUESTS[2], **C2I)
    rt.start_worker()
    assert rt.stop_worker(timeout=TIMEOUT_S)  # drains: both finish
    assert first.status == second.status == "done"
    queued = [rt.submit(**r, **C2I) for r in REQUESTS[:3]]
    events = Recorder()
    queued[2].add_listener(events)
    rt.start_worker()
    assert rt.stop_worker(cancel=True, timeout=TIMEOUT_S)
    assert all(h.status == "cancelled" for h in queued) and events.types()[-1] == "cancelled"
    assert not rt.stats()["worker_running"] and rt.stats()["active_requests"] == 0


def test_step_from_two_threads(c2i16_files, single_thread, alone):
    rt = c2i_runtime(c2i16_files, max_batch=6)
    handles = [rt.submit(**r, **C2I) for r in REQUESTS[:3]]
    errors: list[BaseException] = []

    def stepper() -> None:
        try:
            while not all(h.done for h in handles):
                rt.step()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=stepper) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT_S)
    assert not errors and all(h.status == "done" for h in handles)
    assert torch.equal(handles[0].result().tokens, alone[3]) and torch.equal(handles[1].result().tokens, alone[7])
