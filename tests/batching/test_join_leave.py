"""Joining and leaving a running batch: slots taken at join, freed at the last step (cache lengths back to 0) and
reused by the next request in FIFO order; a request that does not fit waits in the queue."""

from __future__ import annotations

import pytest
import torch

from batching_helpers import C2I, c2i_runtime, run_until_done, steps


@pytest.fixture
def rt(c2i16_files, single_thread):
    return c2i_runtime(c2i16_files, max_batch=4)  # 2 guided slots


def _batch(rt, group):
    """The group's device state, held by the runner."""
    return rt.runner.slot_batch(group.key)


def _group(rt):
    (group,) = [g for g in rt.scheduler._groups.values()]
    return group


def test_leaving_frees_slots_for_the_next_request(rt):
    a = rt.submit(class_label=1, guidance_scale=3.0, seed=1, **C2I)
    steps(rt, 4)
    b = rt.submit(class_label=2, guidance_scale=3.0, seed=2, **C2I)
    c = rt.submit(class_label=3, guidance_scale=3.0, seed=3, **C2I)  # the batch is full: waits
    d = rt.submit(class_label=4, guidance_scale=3.0, seed=4, **C2I)
    rt.step()
    group = _group(rt)
    assert (a.status, b.status, c.status, d.status) == ("running", "running", "queued", "queued")
    assert [t.handle for t in group.queue] == [c, d]  # FIFO
    lengths = _batch(rt, group).cache.lengths
    assert (lengths > 0).all() and _batch(rt, group).live.tolist() == [1, 1, 1, 1]
    while not a.done:
        rt.step()
    assert a.status == "done" and a.progress == (16, 16)
    # a left after its last step, freeing slot 0 (lengths 0, not live); c is admitted at the next round's start
    assert c.status == "queued" and group.table.find(1) == 0
    assert lengths[:2].tolist() == [0, 0] and _batch(rt, group).live[:2].tolist() == [0, 0]
    rt.step()
    assert c.status == "running" and group.queue[0].handle is d
    assert rt.scheduler._live[c.id][0].first_slot == 0  # the freed slot is reused
    run_until_done(rt, b, c, d)
    assert all(h.status == "done" for h in (a, b, c, d))
    assert not group.active and (_batch(rt, group).cache.lengths == 0).all() and (_batch(rt, group).live == 0).all()


def test_a_request_of_two_images_needs_two_neighbouring_slots(rt):
    a = rt.submit(class_label=1, guidance_scale=3.0, seed=1, **C2I)
    steps(rt, 2)
    pair = rt.submit(class_label=2, guidance_scale=3.0, seed=2, num_images=2, **C2I)
    steps(rt, 3)
    assert pair.status == "queued" and rt.stats()["queue_length"] == 1
    run_until_done(rt, a, pair)
    out = pair.result().tokens
    assert out.shape == (2, 256, 32) and not torch.equal(out[0], out[1])  # images 0 and 1: seeds 2 and 3
