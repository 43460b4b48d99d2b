"""Microbenchmarks of the fused sampler step (CUDA GPU): ``sampler_step`` (one Euler–Maruyama step) and
``sampler_final`` (last Euler step + sign + packed words), each beside the PyTorch reference on the same inputs.

Shapes: the 14B T2I head's step with guidance (2 rows × P = 64 × C = 32 at batch 1, 16 rows at batch 8), the
class-conditional B-16x step at batch 256 (512 guided rows × P = 16), and one bandwidth row (256 guided rows ×
4,096 tokens) where the kernel, not the launch, sets the time. The head's prediction is bf16, x and noise float32.
The released shapes move a few KB to 2 MB: their memory floor is below a kernel launch, so their
``ours_over_floor`` measures launch latency (CUDA graphs amortize it), and only the bandwidth row tests the kernel.

``extra_info``: CUDA-event times of back-to-back calls of ours (``ours_s``) and the reference (``reference_s``),
the bytes read + written, the memory floor (``floor_s``), ``ours_over_floor`` and the GPU environment.
"""

from __future__ import annotations


import floors
import pytest
import torch
from shapes import C2I_BATCH, T2I_14B

from bitdance_rt.kernels.sampler_step import sampler_final, sampler_step
from bitdance_rt.reference.sampler import final_step_from_prediction, running_times, step_from_prediction, step_times
from bitdance_rt.reference.token_packing import pack_signs_ref

PRED_DTYPE = torch.bfloat16
CHANNELS = T2I_14B["token_channels"]
NUM_STEPS = 50   # T2I default sampling steps
STEP = 25
CFG = 4.0

# name: (guided batch B (rows = 2B), patch P)
STEP_SHAPES = {
    "t2i14b_b1_p64": (1, 64),
    "t2i14b_b8_p64": (8, 64),
    f"c2iB_b{C2I_BATCH}_p16": (C2I_BATCH, 16),
    "bandwidth_b256_4096tok": (256, 4096),
}




def step_inputs(batch: int, patch: int):
    gen = torch.Generator(device="cuda").manual_seed(batch * 1000 + patch)
    pred = torch.randn(2 * batch, patch, CHANNELS, generator=gen, device="cuda").mul_(0.5).to(PRED_DTYPE)
    x = torch.randn(batch, patch, CHANNELS, generator=gen, device="cuda")
    noise = torch.randn(batch, patch, CHANNELS, generator=gen, device="cuda")
    return pred, x, noise


@pytest.mark.parametrize("shape", list(STEP_SHAPES))
def test_bench_sampler_step(benchmark, shape):
    batch, patch = STEP_SHAPES[shape]
    pred, x, noise = step_inputs(batch, patch)
    times = step_times(NUM_STEPS, 1.0, "cuda")
    running = running_times(times)
    t, dt = running[STEP], times[STEP + 1] - times[STEP]
    out = torch.empty_like(x)
    n = x.numel()
    record(benchmark, lambda: sampler_step(pred, x, noise, times, running, STEP, CFG, True, out=out),
            lambda: step_from_prediction(pred, x, t, dt, noise, CFG, True),
            bytes_moved=2 * n * pred.element_size() + 3 * n * 4)


@pytest.mark.parametrize("shape", list(STEP_SHAPES))
def test_bench_sampler_final(benchmark, shape):
    """Last step with bf16 tokens for both halves and their packed words."""
    batch, patch = STEP_SHAPES[shape]
    pred, x, _ = step_inputs(batch, patch)
    tokens = torch.empty_like(pred)
    packed = torch.empty(2 * batch, patch, CHANNELS // 32, dtype=torch.int32, device="cuda")

    def reference():
        signs = torch.sign(torch.cat([final_step_from_prediction(pred, x, CFG, True)] * 2)).to(PRED_DTYPE)
        return signs, pack_signs_ref(signs)

    n = x.numel()
    record(benchmark, lambda: sampler_final(pred, x, CFG, True, tokens_out=tokens, packed_out=packed), reference,
            bytes_moved=2 * n * pred.element_size() + n * 4 + 2 * n * tokens.element_size() + 2 * n // 8)


def record(benchmark, ours, reference, bytes_moved: float) -> None:
    floors.record_row(benchmark, ours, {"reference": reference}, bytes_moved)
