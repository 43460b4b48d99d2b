"""Continuous batching on a GPU with the Triton engine and real CUDA graphs (skipped without CUDA): a request's
tokens alone equal its tokens in a crowd joining at other AR steps (bf16, exact: whole-batch steps replay one
graph per batch), for both families; the batch's steps are captured once and reused by later requests."""

from __future__ import annotations

import pytest
import torch

from bitdance_rt import Runtime
from bitdance_rt.engine.cuda_graphs import CapturedStep

from batching_helpers import C2I, T2I, run_until_done, steps

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (Triton engine, CUDA graphs)")


def _cuda(path, **kwargs) -> Runtime:
    return Runtime.from_pretrained(path, device="cuda", dtype=torch.bfloat16, backend="triton", **kwargs)


def _alone_and_crowd(make, target: dict, others: list[dict]) -> tuple[torch.Tensor, torch.Tensor, Runtime]:
    alone_rt = make()
    alone = alone_rt.submit(**target)
    run_until_done(alone_rt, alone)
    rt = make()
    first = rt.submit(**others[0])
    steps(rt, 3)
    t = rt.submit(**target)
    steps(rt, 2)
    rest = [rt.submit(**o) for o in others[1:]]
    run_until_done(rt, first, t, *rest)
    return alone.result().tokens, t.result().tokens, rt


def test_t2i_crowd_equals_alone_with_graphs(t2i64_dir):
    def make():
        return _cuda(t2i64_dir, max_batch=6)
    target = dict(prompt="a red fox", guidance_scale=5.0, seed=7, **T2I)
    others = [dict(prompt="two cats asleep on a long sofa", guidance_scale=3.0, seed=1, **T2I),
              dict(prompt="a lighthouse", guidance_scale=8.0, seed=2, negative_prompt="blurry", **T2I)]
    alone, crowd, rt = _alone_and_crowd(make, target, others)
    assert torch.equal(alone, crowd) and (crowd != 0).float().mean() > 0.99
    batches = [b.slot_batch for b in rt.runner._batches.values()]
    assert len(batches) == 1 and set(batches[0].steps) == {3}  # one batch, its whole-batch step captured once
    assert rt.engine.use_cuda_graphs and isinstance(batches[0].steps[3]._run_head.__self__, CapturedStep)


def test_c2i_crowd_equals_alone_with_graphs(c2i16_files):
    model, tokenizer = c2i16_files

    def make():
        return _cuda(model, tokenizer_path=tokenizer, max_batch=8)
    target = dict(class_label=207, guidance_scale=4.0, seed=21, **C2I)
    others = [dict(class_label=1, guidance_scale=2.5, seed=1, num_images=2, **C2I),
              dict(class_label=99, guidance_scale=6.0, seed=2, **C2I)]
    alone, crowd, _ = _alone_and_crowd(make, target, others)
    assert torch.equal(alone, crowd)
