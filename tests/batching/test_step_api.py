"""The step-level API on the tiny class-conditional model (reference backend, so the scheduler's engine runs the
PyTorch operations): submit / step / handle states, progress events, results, argument checks, and ``generate``
on the engine path as a thin loop over the same machinery."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from bitdance_rt import ImageRequest, InvalidRequestError, RequestHandle, Runtime

from batching_helpers import C2I, Recorder, c2i_runtime, run_until_done


@pytest.fixture(scope="module")
def rt(c2i16_files, single_thread) -> Runtime:
    return c2i_runtime(c2i16_files, max_batch=4)


def test_submit_step_result(rt):
    rec = Recorder()
    h = rt.submit(ImageRequest(class_label=207, num_sampling_steps=1, guidance_scale=3.0, seed=11, output_type="np"))
    assert isinstance(h, RequestHandle) and h.status == "queued" and not h.done and h.progress == (0, 16)
    h.add_listener(rec)
    assert rt.stats()["queue_length"] == 1
    assert rt.step() and h.status == "running"
    assert h.progress == (2, 16)  # the join ran step 0 (unguided over both rows), the batch step 1
    rounds = run_until_done(rt, h)
    assert rounds == 14 and h.status == "done" and h.done
    assert rec.progress() == list(range(1, 17)) and rec.types()[-1] == "done"
    assert all(e["total"] == 16 for e in rec.events[:-1])
    out = h.result(timeout=0)
    assert out.tokens.dtype == torch.int8 and out.tokens.shape == (1, 256, 32)
    assert set(out.tokens.unique().tolist()) <= {-1, 0, 1} and (out.tokens == 1).any() and (out.tokens == -1).any()
    assert isinstance(out.images, np.ndarray) and out.images.shape == (1, 256, 256, 3)
    assert out.seed == 11 and out.height == out.width == 256
    assert set(out.timings) == {"queued_s", "tokens_s", "decode_s"}
    assert not rt.step()  # nothing left
    late = Recorder()
    h.add_listener(late)  # after the end: the terminal event at once
    assert late.types() == ["done"]
    assert not h.cancel()
    stats = rt.stats()
    assert stats["images_completed"] >= 1 and stats["active_requests"] == 0 and stats["queue_length"] == 0


def test_keyword_submit_equals_request_and_seed_is_drawn(rt):
    a = rt.submit(class_label=5, seed=3, guidance_scale=2.0, **C2I)
    b = rt.submit(ImageRequest(class_label=5, seed=3, guidance_scale=2.0, **C2I))
    c = rt.submit(class_label=5, guidance_scale=2.0, **C2I)  # no seed: one is drawn and reported
    run_until_done(rt, a, b, c)
    assert torch.equal(a.result().tokens, b.result().tokens)
    assert isinstance(c.result().seed, int) and c.result().seed != 3
    assert not torch.equal(a.result().tokens, c.result().tokens)


def test_image_request_is_frozen():
    r = ImageRequest(prompt="x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.seed = 4


@pytest.mark.parametrize("kwargs, message", [
    (dict(class_label=1000), "class id in 0..999"),
    (dict(class_label=3, prompt="a fox"), "takes a class_label, not a prompt"),
    (dict(class_label=3, height=512, width=512), "256x256 images only"),
    (dict(class_label=3, num_images=0), "num_images must be an integer >= 1"),
    (dict(class_label=3, num_images=3), "need 6 batch rows; this runtime's max_batch is 4"),
    (dict(class_label=3, output_type="jpg"), "output_type='jpg'"),
    (dict(class_label=3, guidance_scale=float("nan")), "guidance_scale must be a finite number"),
    (dict(class_label=3, seed=-1), "seed must be an integer >= 0"),
    (dict(class_label=3, colour="red"), "unknown argument(s) colour"),
])
def test_bad_requests_are_refused_and_change_nothing(rt, kwargs, message):
    before = rt.stats()
    with pytest.raises(InvalidRequestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        rt.submit(**kwargs)
    after = rt.stats()
    assert (after["queue_length"], after["active_requests"]) == (before["queue_length"], before["active_requests"])


def test_submit_takes_a_request_or_keywords_not_both(rt):
    with pytest.raises(InvalidRequestError, match="not both"):
        rt.submit(ImageRequest(class_label=3), seed=1)
    with pytest.raises(InvalidRequestError, match="takes an ImageRequest"):
        rt.submit({"class_label": 3})


def test_generate_on_the_engine_is_a_loop_over_submit_and_step(c2i16_files, single_thread):
    """``generate`` on an engine backend (here an engine with the PyTorch operations put in place of the Triton
    one) gives the tokens that submit/step give for the same requests in a batch of the same size (generate
    prefills its requests in one pass, serving each on its own rows; on this CPU both give the same bits)."""
    engine_rt = c2i_runtime(c2i16_files)
    engine_rt.engine = engine_rt.runner.engine  # the engine with the PyTorch operations, as generate's engine
    calls = []
    out = engine_rt.generate(class_labels=[3, 7], num_sampling_steps=1, guidance_scale=3.0, seed=5,
                             output_type="tokens", callback=lambda k, n: calls.append((k, n)))
    assert calls == [(k, 16) for k in range(1, 17)]
    served = c2i_runtime(c2i16_files, max_batch=4)  # 2 guided slots: the same batch as generate's
    handles = [served.submit(class_label=c, guidance_scale=3.0, seed=5 + i, **C2I) for i, c in enumerate([3, 7])]
    run_until_done(served, *handles)
    assert torch.equal(out.tokens, torch.cat([h.result().tokens for h in handles]))
