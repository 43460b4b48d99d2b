"""The arithmetic of admission and previews, with injected times: ``Retry-After`` from the measured drain rate
(``DrainMeter``) and the preview budget's duty cycle (``PreviewBudget``)."""

from __future__ import annotations

import pytest

from bitdance_rt.http.admission import DrainMeter
from bitdance_rt.http.previews import PreviewBudget


def test_retry_after_is_the_time_the_queue_takes_to_drain():
    meter = DrainMeter(window_s=120.0, fallback_s=5, max_s=600)
    start = meter._started
    assert meter.rate(start + 10) is None and meter.retry_after_s(64, start + 10) == 5  # nothing ended yet
    for k in range(1, 43):  # 42 requests ended over 60 s: 0.7 per second
        meter.record_end(start + k * 60 / 42)
    assert meter.rate(start + 60) == pytest.approx(0.7)
    assert meter.retry_after_s(64, start + 60) == 92  # 64 pending at 0.7/s: about 90 s, not 1 s
    assert meter.retry_after_s(1, start + 60) == 2
    assert meter.retry_after_s(10 ** 6, start + 60) == 600  # clamped
    assert meter.rate(start + 300) is None  # all ends left the window


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_preview_budget_keeps_previews_to_its_share_of_time():
    clock = Clock()
    budget = PreviewBudget(0.05, clock)
    assert budget.acquire() and not budget.acquire()  # the first (cost unknown) is allowed, one at a time
    budget.settle(0.5)
    made, spent = 1, 0.5
    for _ in range(2000):  # a stream asking every 10 ms for 20 s
        clock.now += 0.01
        if budget.acquire():
            budget.settle(0.5)
            made, spent = made + 1, spent + 0.5
    assert spent <= 0.05 * clock.now + 0.5  # the share, plus at most one preview
    assert made == 2  # 0.5 s previews at 5 %: one per 10 s


def test_preview_budget_after_an_idle_spell_holds_one_preview():
    clock = Clock()
    budget = PreviewBudget(0.1, clock)
    budget.hint(1.0)  # a final decode took 1 s: no preview before 10 s of credit
    assert not budget.acquire()
    clock.now = 1000.0
    assert budget.acquire()
    budget.settle(1.0)
    assert not budget.acquire()  # idle time is not banked beyond one preview
    clock.now += 9.0
    assert not budget.acquire()
    clock.now += 1.1
    assert budget.acquire()


def test_preview_budget_of_one_is_unlimited():
    budget = PreviewBudget(1.0, Clock())
    assert budget.unlimited and all(budget.acquire() for _ in range(5))


def test_preview_budget_refuses_a_bad_fraction():
    with pytest.raises(ValueError, match="> 0"):
        PreviewBudget(0.0)
