"""Microbenchmarks of the CUDA sampler operators (``csrc/sampler_step.cu``; CUDA GPU), on the shapes of
``test_bench_sampler_step.py`` (the 14B T2I head's guided step at batch 1 and 8, the class-conditional step at
batch 256, one bandwidth row of 256 x 4,096 tokens), bf16 prediction, float32 x:

- ``sampler_step_keyed`` (noise made in the kernel) vs ``triton``: the Triton ``sampler_step`` plus the noise it
  reads, drawn by ``torch.randn`` into a buffer first (the cheapest way to feed it), vs ``reference``: the keyed
  noise ``keyed_normal`` on the GPU and ``step_from_prediction``. Floor: pred read + x read + out written.
- ``sampler_final`` (last step, bf16 tokens of both halves, packed words) vs the Triton ``sampler_final``
  and the reference. Floor: pred + x read, tokens + words written.
- ``keyed_noise`` alone vs ``keyed_normal`` on the GPU (and ``torch.randn`` into a buffer in ``extra_info``).
  Floor: the normals written.
Guidance scales are per-row device tensors (as the engine passes them), so every call can be captured in a graph.
"""

from __future__ import annotations

import floors
import pytest
import torch
from test_bench_sampler_step import CFG, CHANNELS, NUM_STEPS, PRED_DTYPE, STEP, STEP_SHAPES

from bitdance_rt.reference.philox_noise import keyed_normal
from bitdance_rt.reference.sampler import final_step_from_prediction, running_times, step_from_prediction, step_times
from bitdance_rt.reference.token_packing import pack_signs_ref


def cuda_ops():
    from bitdance_rt.cuda_ops import sampler_step as ops
    return ops


def triton_ops():
    from bitdance_rt.kernels import sampler_step as ops
    return ops


def inputs(batch: int, patch: int):
    """pred (guided, bf16), x, per-row cfg, and the keys of one request per row at AR step 7."""
    gen = torch.Generator(device="cuda").manual_seed(batch * 1000 + patch)
    pred = torch.randn(2 * batch, patch, CHANNELS, generator=gen, device="cuda").mul_(0.5).to(PRED_DTYPE)
    x = torch.randn(batch, patch, CHANNELS, generator=gen, device="cuda")
    cfg = torch.full((batch,), CFG, device="cuda")
    keys = (torch.arange(batch, dtype=torch.int64, device="cuda") * 7919 + 12345,
            torch.full((batch,), 7, dtype=torch.int32, device="cuda"),
            torch.zeros(batch, dtype=torch.int32, device="cuda"))
    return pred, x, cfg, keys


@pytest.mark.parametrize("shape", list(STEP_SHAPES))
def test_bench_cuda_sampler_step(benchmark, shape):
    batch, patch = STEP_SHAPES[shape]
    pred, x, cfg, keys = inputs(batch, patch)
    times = step_times(NUM_STEPS, 1.0, "cuda")
    running = running_times(times)
    t, dt = running[STEP], times[STEP + 1] - times[STEP]
    out, noise = torch.empty_like(x), torch.empty_like(x)
    ours, triton = cuda_ops().sampler_step_keyed, triton_ops().sampler_step

    def triton_with_noise():
        torch.randn(x.shape, device="cuda", out=noise)
        return triton(pred, x, noise, times, running, STEP, cfg, True, out=out)

    def reference():
        step_noise = keyed_normal(*keys, STEP + 1, patch, CHANNELS)
        return step_from_prediction(pred, x, t, dt, step_noise, cfg, True)

    n = x.numel()
    floors.record_row(benchmark, lambda: ours(pred, x, times, running, STEP, cfg, True, *keys, out=out),
                      {"triton": triton_with_noise, "reference": reference},
                      bytes_moved=2 * n * pred.element_size() + 2 * n * 4)


@pytest.mark.parametrize("shape", list(STEP_SHAPES))
def test_bench_cuda_sampler_final(benchmark, shape):
    """Last step with bf16 tokens for both halves and their packed words."""
    batch, patch = STEP_SHAPES[shape]
    pred, x, cfg, _ = inputs(batch, patch)
    tokens = torch.empty_like(pred)
    packed = torch.empty(2 * batch, patch, CHANNELS // 32, dtype=torch.int32, device="cuda")
    ours, triton = cuda_ops().sampler_final, triton_ops().sampler_final

    def reference():
        signs = torch.sign(torch.cat([final_step_from_prediction(pred, x, cfg, True)] * 2)).to(PRED_DTYPE)
        return signs, pack_signs_ref(signs)

    n = x.numel()
    floors.record_row(benchmark, lambda: ours(pred, x, cfg, True, tokens_out=tokens, packed_out=packed),
                      {"triton": lambda: triton(pred, x, cfg, True, tokens_out=tokens, packed_out=packed),
                       "reference": reference},
                      bytes_moved=2 * n * pred.element_size() + n * 4 + 2 * n * tokens.element_size() + 2 * n // 8)


@pytest.mark.parametrize("shape", list(STEP_SHAPES))
def test_bench_cuda_keyed_noise(benchmark, shape):
    """The start sample of a sampling loop: keyed normals ``[B, P, C]`` written to a buffer."""
    batch, patch = STEP_SHAPES[shape]
    _, x, _, keys = inputs(batch, patch)
    out = torch.empty_like(x)
    ours = cuda_ops().keyed_noise
    floors.record_row(benchmark, lambda: ours(*keys, 0, patch, CHANNELS, out=out),
                      {"reference": lambda: keyed_normal(*keys, 0, patch, CHANNELS)}, bytes_moved=4 * x.numel())
    randn_s, mode = floors.time_graphed(lambda: torch.randn(x.shape, device="cuda", out=out))
    benchmark.extra_info.update({"torch_randn_s": randn_s, "torch_randn_timing": mode})
