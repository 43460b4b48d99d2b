"""Continuous batching: a request's tokens are the same alone as in a crowd of requests with other prompts, prompt
lengths, labels, guidance scales and image counts, joining and leaving at other AR steps (float32 on the CPU,
compared exactly: every step computes the whole batch, so no row's arithmetic depends on its neighbours).
Groups of different step counts advance side by side, one AR step per round each."""

from __future__ import annotations

import pytest
import torch

from batching_helpers import C2I, T2I, c2i_runtime, run_until_done, steps, t2i_runtime


def _tokens(handle) -> torch.Tensor:
    out = handle.result(timeout=0).tokens
    assert out.dtype == torch.int8 and (out != 0).float().mean() > 0.99
    return out


def test_c2i_alone_equals_in_a_crowd(c2i16_files, single_thread):
    """The class-conditional guided request joins a running batch: its step 0 (unguided over both rows) runs on its
    own rows, then the guidance schedule follows its own AR step, not the batch's."""
    target = dict(class_label=207, guidance_scale=4.0, seed=21, **C2I)
    alone_rt = c2i_runtime(c2i16_files, max_batch=8)
    alone = alone_rt.submit(**target)
    run_until_done(alone_rt, alone)

    rt = c2i_runtime(c2i16_files, max_batch=8)  # 4 guided slots
    a = rt.submit(class_label=1, guidance_scale=2.5, seed=1, num_images=2, **C2I)
    steps(rt, 3)
    b = rt.submit(class_label=99, guidance_scale=6.0, seed=2, **C2I)
    steps(rt, 2)
    t = rt.submit(**target)  # joins at a's AR step 6 and b's step 3
    steps(rt, 4)
    assert (a.progress[0], b.progress[0], t.progress[0]) == (10, 7, 5)
    c = rt.submit(class_label=500, guidance_scale=3.0, seed=3, **C2I)  # a full batch: waits for a to leave
    steps(rt, 1)
    assert c.status == "queued"
    run_until_done(rt, a, b, t, c)
    assert torch.equal(_tokens(t), _tokens(alone))
    assert not torch.equal(_tokens(a)[:1], _tokens(t))


def test_t2i_alone_equals_in_a_crowd(t2i64_dir, single_thread):
    """Text-to-image: rows of different prompt lengths and negative prompts, guidance per row."""
    target = dict(prompt="a red fox", guidance_scale=5.0, seed=7, **T2I)
    alone_rt = t2i_runtime(t2i64_dir, max_batch=6)
    alone = alone_rt.submit(**target)
    run_until_done(alone_rt, alone)

    rt = t2i_runtime(t2i64_dir, max_batch=6)  # 3 guided slots
    a = rt.submit(prompt="two cats asleep on a long green sofa in the afternoon sun", guidance_scale=3.0, seed=1,
                  negative_prompt="blurry", **T2I)
    steps(rt, 5)
    t = rt.submit(**target)
    steps(rt, 2)
    b = rt.submit(prompt="a lighthouse", guidance_scale=8.0, seed=2, **T2I)
    run_until_done(rt, a, t, b)
    assert torch.equal(_tokens(t), _tokens(alone))
    assert a.spec.guidance != t.spec.guidance and not torch.equal(_tokens(a), _tokens(t))


def test_groups_of_other_step_counts_advance_side_by_side(c2i16_files, single_thread):
    rt = c2i_runtime(c2i16_files, max_batch=4)
    one = rt.submit(class_label=3, guidance_scale=1.0, seed=4, **C2I)
    two = rt.submit(class_label=3, guidance_scale=1.0, seed=4, **{**C2I, "num_sampling_steps": 2})
    steps(rt, 1)
    assert rt.stats()["groups"] == 2
    for k in range(2, 6):
        rt.step()
        assert one.progress[0] == two.progress[0] == k  # each group one AR step per round
    run_until_done(rt, one, two)
    assert not torch.equal(_tokens(one), _tokens(two))


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_bucketed_steps_on_this_cpu(c2i16_files, single_thread, guidance):
    """``batch_invariant=False`` computes only a power-of-two prefix of the slots. On this CPU (MKL, float32) a
    row's result does not change between the prefix sizes used here (>= 16 tokens per GEMM); on a GPU the GEMM
    library may pick another kernel per size, which is why whole-batch steps are the default."""
    target = dict(class_label=42, guidance_scale=guidance, seed=9, **C2I)
    alone_rt = c2i_runtime(c2i16_files, max_batch=8, batch_invariant=False)
    alone = alone_rt.submit(**target)
    run_until_done(alone_rt, alone)
    rt = c2i_runtime(c2i16_files, max_batch=8, batch_invariant=False)
    others = [rt.submit(class_label=c, guidance_scale=guidance, seed=c, **C2I) for c in (5, 6)]
    steps(rt, 2)
    t = rt.submit(**target)
    run_until_done(rt, t, *others)
    assert torch.equal(_tokens(t), _tokens(alone))
