"""Cancelling queued and running requests, and a request whose prefill raises: each ends alone, with the right
status, error and events, while the others finish with the tokens they would have had anyway."""

from __future__ import annotations

import pytest
import torch

from bitdance_rt import RequestCancelled, RequestFailed

from batching_helpers import C2I, Recorder, c2i_runtime, run_until_done, steps


@pytest.fixture
def rt(c2i16_files, single_thread):
    return c2i_runtime(c2i16_files, max_batch=4)


@pytest.fixture(scope="module")
def reference_tokens(c2i16_files, single_thread) -> torch.Tensor:
    """Label 8's tokens, run alone."""
    rt = c2i_runtime(c2i16_files, max_batch=4)
    h = rt.submit(class_label=8, guidance_scale=3.0, seed=8, **C2I)
    run_until_done(rt, h)
    return h.result().tokens


def test_cancel_queued_and_running(rt, reference_tokens):
    keep = rt.submit(class_label=8, guidance_scale=3.0, seed=8, **C2I)
    running = rt.submit(class_label=9, guidance_scale=3.0, seed=9, **C2I)
    queued = rt.submit(class_label=10, guidance_scale=3.0, seed=10, **C2I)
    events_running, events_queued = Recorder(), Recorder()
    running.add_listener(events_running)
    queued.add_listener(events_queued)
    steps(rt, 3)
    assert queued.status == "queued" and running.status == "running"
    assert queued.cancel() and queued.status == "cancelled" and queued.done
    assert events_queued.types() == ["cancelled"] and rt.stats()["queue_length"] == 0
    assert running.cancel() and not running.cancel()
    progress_at_cancel = running.progress[0]
    steps(rt, 2)  # the cancelled request leaves at the next round: no more progress, no events after "cancelled"
    assert running.progress[0] == progress_at_cancel
    assert events_running.types() == ["progress"] * progress_at_cancel + ["cancelled"]
    group = next(iter(rt.scheduler._groups.values()))
    assert [t.handle for t in group.active] == [keep] and rt.runner.slot_batch(group.key).live.tolist() == [1, 1, 0, 0]
    for h in (running, queued):
        with pytest.raises(RequestCancelled, match=f"request {h.id} was cancelled"):
            h.result(timeout=0)
    run_until_done(rt, keep)
    assert torch.equal(keep.result().tokens, reference_tokens)
    stats = rt.stats()
    assert stats["requests_cancelled"] == 2 and stats["requests_done"] == 1


def test_result_timeout(rt):
    h = rt.submit(class_label=1, guidance_scale=3.0, seed=1, **C2I)
    with pytest.raises(TimeoutError, match="has not finished after 0.01 s"):
        h.result(timeout=0.01)
    assert not h.wait(0.01)
    h.cancel()
    assert h.wait(0)


def test_a_failing_prefill_fails_alone(rt, reference_tokens, monkeypatch):
    engine = rt.runner.engine
    join = engine.join

    def faulty_join(batch, row_index, rows, *args, **kwargs):
        if 13 in rows:  # the two requests join in one pass; that fails, then each is retried alone
            raise RuntimeError("injected prefill failure")
        return join(batch, row_index, rows, *args, **kwargs)

    monkeypatch.setattr(engine, "join", faulty_join)
    keep = rt.submit(class_label=8, guidance_scale=3.0, seed=8, **C2I)
    bad = rt.submit(class_label=13, guidance_scale=3.0, seed=13, **C2I)
    events = Recorder()
    bad.add_listener(events)
    rt.step()
    assert bad.status == "failed" and keep.status == "running"
    assert events.events == [{"type": "failed", "error": "RuntimeError: injected prefill failure"}]
    with pytest.raises(RequestFailed, match="injected prefill failure") as info:
        bad.result()
    assert isinstance(info.value.__cause__, RuntimeError)
    after = rt.submit(class_label=8, guidance_scale=3.0, seed=8, **C2I)  # the failed request's slot is free again
    run_until_done(rt, keep, after)
    assert torch.equal(keep.result().tokens, reference_tokens)
    assert torch.equal(after.result().tokens, reference_tokens)
    assert rt.stats()["requests_failed"] == 1


def test_a_failing_batch_step_fails_its_group_only(rt, monkeypatch):
    other = rt.submit(class_label=8, guidance_scale=1.0, seed=8, **C2I)  # unguided: a group of its own
    doomed = rt.submit(class_label=9, guidance_scale=3.0, seed=9, **C2I)
    steps(rt, 2)
    engine = rt.runner.engine
    ar_step = engine.ar_step

    def faulty(batch, slots):
        if batch.guided:
            raise RuntimeError("injected step failure")
        return ar_step(batch, slots)

    monkeypatch.setattr(engine, "ar_step", faulty)
    rt.step()
    assert doomed.status == "failed" and other.status == "running"
    monkeypatch.setattr(engine, "ar_step", ar_step)
    again = rt.submit(class_label=9, guidance_scale=3.0, seed=9, **C2I)  # the group gets a fresh batch
    run_until_done(rt, other, again)
    assert other.status == again.status == "done"
