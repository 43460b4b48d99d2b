"""The serving limits: a request that can never fit the memory budget is refused at submit with what it needs and
what the budget is; one that does not fit now waits until memory frees (an idle group's batch is dropped for it);
``max_batch`` and ``memory_budget`` are checked when the runtime is made."""

from __future__ import annotations

import re

import pytest

from bitdance_rt import ImageRequest, InvalidRequestError
from bitdance_rt.batching.limits import parse_memory_budget
from bitdance_rt.request import resolve_request

from batching_helpers import C2I, c2i_runtime, run_until_done, steps

GUIDED_ONE_STEP = dict(guidance_scale=3.0, **C2I)


def _needs(rt, slots: int, num_steps: int) -> tuple[int, int]:
    """(bytes of a guided batch of ``slots`` slots, bytes of joining one image to it)."""
    spec = resolve_request(ImageRequest(class_label=3, **{**GUIDED_ONE_STEP, "num_sampling_steps": num_steps}),
                           rt.family)
    max_len = rt.runner.placement(spec).max_len
    return rt.runner.batch_bytes(spec, slots, max_len), rt.runner.join_bytes(spec, slots, max_len)


def test_a_request_that_can_never_fit_is_refused_with_the_reason(c2i16_files, single_thread):
    rt = c2i_runtime(c2i16_files, max_batch=4, memory_budget=4096)
    with pytest.raises(InvalidRequestError) as info:
        rt.submit(class_label=3, **GUIDED_ONE_STEP)
    message = str(info.value)
    assert "can never fit the memory budget" in message
    # the join prefills the batch's whole fixed shape (2 slots of 2 rows), a figure in MiB for the tiny model
    assert re.search(r"needs [0-9.]+ MiB and joining it [0-9.]+ MiB more, [0-9.]+ MiB in all; the budget is "
                     r"4\.0 KiB", message), message
    assert "Raise memory_budget" in message
    assert rt.stats()["queue_length"] == 0 and rt.stats()["memory_budget_bytes"] == 4096


def test_a_request_waits_for_memory_then_runs(c2i16_files, single_thread):
    probe = c2i_runtime(c2i16_files, max_batch=4)
    (one, join), (two, _) = _needs(probe, 2, 1), _needs(probe, 2, 2)
    budget = max(one, two) + join + min(one, two) // 2  # room for one batch and a join, not for two batches
    rt = c2i_runtime(c2i16_files, max_batch=4, memory_budget=budget)
    first = rt.submit(class_label=3, **GUIDED_ONE_STEP)
    second = rt.submit(class_label=4, **{**GUIDED_ONE_STEP, "num_sampling_steps": 2})  # another group
    steps(rt, 3)
    assert first.status == "running" and second.status == "queued"
    stats = rt.stats()
    assert stats["memory_reserved_bytes"] <= stats["memory_budget_bytes"]
    run_until_done(rt, first)
    rt.step()  # first's idle batch is dropped to make room
    assert second.status == "running"
    run_until_done(rt, second)
    assert second.status == "done"
    assert rt.stats()["memory_reserved_bytes"] == two  # only the second group's batch is held now


@pytest.mark.parametrize("limits, message", [
    (dict(max_batch=0), "max_batch must be an integer >= 1"),
    (dict(max_batch=2.5), "max_batch must be an integer >= 1"),
    (dict(memory_budget=-1), "memory_budget must be a positive number of bytes"),
    (dict(memory_budget="lots"), "memory_budget must be a positive number of bytes"),
])
def test_limits_are_checked(c2i16_files, limits, message):
    with pytest.raises(InvalidRequestError, match=message):
        c2i_runtime(c2i16_files, **limits)


def test_memory_budget_sizes():
    assert parse_memory_budget("20GiB") == 20 * 2 ** 30
    assert parse_memory_budget("1.5 GB") == 1_500_000_000
    assert parse_memory_budget("512mib") == 512 * 2 ** 20
    assert parse_memory_budget(4096) == 4096 and parse_memory_budget(None) is None
