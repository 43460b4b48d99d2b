"""The memory estimates count what the engine allocates: a batch's static buffers (``SlotBatch.buffer_bytes``) and
the join scratch (``memory.join_scratch_bytes``) against the bytes of the tensors the engine really holds, for the
class-conditional family (leading unguided step 0: the scratch is kept with the batch and counted in
``batch_bytes``) and text-to-image (no leading step: the scratch is made per join and counted in ``join_bytes``)."""

from __future__ import annotations

import pytest
import torch

from bitdance_rt import ImageRequest
from bitdance_rt.engine.memory import batch_bytes, join_bytes, join_scratch_bytes
from bitdance_rt.request import resolve_request


def tensor_bytes(values) -> int:
    total = 0
    for v in values:
        if isinstance(v, torch.Tensor):
            total += v.numel() * v.element_size()
        elif hasattr(v, "keys") and hasattr(v, "lengths"):  # a StaticKVCache
            total += v.nbytes() + v.lengths.numel() * v.lengths.element_size()
    return total


def _runner_and_spec(rt, **fields):
    condition = {"prompt": "a red cube"} if rt.family.condition_field == "prompt" else {"class_label": 7}
    spec = resolve_request(ImageRequest(**condition, num_sampling_steps=1, output_type="tokens", **fields), rt.family)
    runner = rt.runner
    return runner, spec, runner.placement(spec)


@pytest.mark.parametrize("family", ["c2i", "t2i"])
def test_join_scratch_estimate_equals_the_allocation(family, rt_c2i16, rt_t2i16):
    rt = rt_c2i16 if family == "c2i" else rt_t2i16
    runner, spec, placement = _runner_and_spec(rt, guidance_scale=3.0)
    slots, engine = 3, runner.engine
    leading = runner.leading_unguided_steps(spec)
    batch = engine.allocate_batch(slots, placement.max_len, spec.num_steps, spec.guided)
    shape = (batch.rows, rt.family.prefill_length(placement.max_len, spec.num_ar))
    positions = [torch.zeros(engine.parallel, engine.width) for _ in range(leading)]
    state = engine._join_state(batch, shape, positions, True)
    assert join_scratch_bytes(runner.dims, *shape, leading) == tensor_bytes(state.values())
    assert (family == "c2i") == (leading > 0)


def test_batch_keeps_the_join_scratch_only_with_leading_steps(rt_c2i16, rt_t2i16):
    for rt in (rt_c2i16, rt_t2i16):
        runner, spec, placement = _runner_and_spec(rt, guidance_scale=3.0)
        d, slots, max_len = runner.dims, 4, placement.max_len
        length, leading = rt.family.prefill_length(max_len, spec.num_ar), runner.leading_unguided_steps(spec)
        plain = batch_bytes(d, slots, 2, max_len, spec.num_steps)
        scratch = join_scratch_bytes(d, 2 * slots, length, leading)
        assert runner.batch_bytes(spec, slots, max_len) == plain + (scratch if leading else 0)
        # the join always prefills the batch's whole fixed shape, whatever the request's own rows
        prefill = d.backbone_activations(2 * slots * length, length)
        assert runner.join_bytes(spec, slots, max_len) == prefill + (0 if leading else scratch)
        assert runner.join_bytes(spec, slots, max_len) == join_bytes(d, 2 * slots, length, leading, 1, 8, 8, False)


def test_slot_batch_buffers_equal_their_estimate(rt_c2i16):
    runner, spec, placement = _runner_and_spec(rt_c2i16, guidance_scale=3.0)
    engine, d = runner.engine, runner.dims
    batch = engine.allocate_batch(5, placement.max_len, spec.num_steps, True)
    held = tensor_bytes(v for k, v in vars(batch).items() if k != "cache")
    assert held == type(batch).buffer_bytes(5, 2, d.parallel, d.width, d.channels, d.element_bytes, d.token_bytes)
