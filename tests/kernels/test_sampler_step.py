"""The fused sampler-step kernels against the reference sampler and a float64 re-derivation of spec §1 "Sampler".

A whole ``sample_patch`` is rebuilt from ``sampler_step`` / ``sampler_final`` around a small random torch head and
compared with the reference ``sample_patch`` fed the same noise; single steps are compared with the formulas
evaluated in float64 and, op by op in the reference's order, in NumPy float32; a guidance scale per row (cfg
``[B]``) equals launches of each row alone; outputs are NaN-poisoned before every launch; the launchers' argument
errors are checked.

Why NumPy and not the torch reference for the bitwise check: this torch build's CPU ``sqrt`` (and ``** 0.5``) is not
correctly rounded (about 1 in 5 float32 inputs lands 1 ulp off, e.g. sqrt(0.2375f)), so the reference's noise scale
can differ by 1 ulp from the kernel's ``sqrt_rn`` (which is what torch computes on CUDA, where the release runs).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from kernel_testing import DEVICE, DTYPES, ON_GPU, assert_close, poisoned, randn, tolerance

from bitdance_rt.kernels.sampler_step import sampler_final, sampler_step
from bitdance_rt.reference.sampler import (final_step_from_prediction, generator_noise, running_times,
                                           sample_patch, step_from_prediction, step_times)
from bitdance_rt.reference.token_packing import pack_signs_ref, unpack_signs_ref

CHANNELS = 32
COND_CHANNELS = 12


class RandomHead:
    """``tanh(x·A + mean_P(x)·M + t·b + c·W)`` with fixed float32 weights: mixes the tokens of a patch, depends on
    t and c, and lands in (−1, 1) like the T2I head's ``2·sigmoid − 1``."""

    def __init__(self, seed: int):
        self.a = randn(CHANNELS, CHANNELS, seed=seed, scale=CHANNELS ** -0.5)
        self.m = randn(CHANNELS, CHANNELS, seed=seed + 1, scale=CHANNELS ** -0.5)
        self.b = randn(CHANNELS, seed=seed + 2)
        self.w = randn(COND_CHANNELS, CHANNELS, seed=seed + 3, scale=COND_CHANNELS ** -0.5)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ self.a + x.mean(dim=1, keepdim=True) @ self.m + t.view(-1, 1, 1) * self.b
                          + c @ self.w)


def kernel_sample_patch(head: RandomHead, cond: torch.Tensor, cfg: float, num_steps: int, noise, shift: float):
    """``sample_patch`` rebuilt from the kernels: x updated in place, one launch per sampling step."""
    guided = cfg > 1.0
    mult = 2 if guided else 1
    rows, patch = cond.shape[0], cond.shape[1]
    x = noise((rows // mult, patch, CHANNELS)).to(torch.float32)
    times = step_times(num_steps, shift, DEVICE)
    running = running_times(times)
    t_rows = torch.empty(rows, device=DEVICE)
    for step in range(num_steps):
        t_rows[:] = running[step]
        pred = head(torch.cat([x] * mult), t_rows, cond)
        sampler_step(pred, x, noise(tuple(x.shape)).to(torch.float32), times, running, step, cfg, guided, out=x)
    t_rows[:] = 0.95
    pred = head(torch.cat([x] * mult), t_rows, cond)
    return sampler_final(pred, x, cfg, guided, tokens_out=poisoned(rows, patch, CHANNELS),
                         packed_out=poisoned(rows, patch, 1, dtype=torch.int32),
                         sample_out=poisoned(*x.shape))


@pytest.mark.parametrize("patch", [1, 16, 64])
@pytest.mark.parametrize("cfg,rows", [(3.5, 6), (1.0, 5)], ids=["guided", "unguided"])
def test_kernel_loop_equals_sample_patch(patch, cfg, rows):
    """Same head, same noise: final sample within 1e-5 relative of ``sample_patch``, zero sign flips, packed words
    equal to the packed signs."""
    num_steps, shift, seed = 8, 1.0, 100 + patch
    head = RandomHead(seed=1)
    cond = randn(rows, patch, COND_CHANNELS, seed=2)
    ref = sample_patch(head, cond, CHANNELS, cfg, num_steps, generator_noise(torch.Generator().manual_seed(seed),
                                                                                DEVICE), shift=shift)
    got = kernel_sample_patch(head, cond, cfg, num_steps,
                              generator_noise(torch.Generator().manual_seed(seed), DEVICE), shift)
    half = got.sample.shape[0]
    assert_close(got.sample, ref[:half], 1e-5)
    flips = (got.tokens != torch.sign(ref)).sum().item()
    assert flips == 0, f"{flips} token signs differ from sign(sample_patch)"
    assert torch.equal(got.packed, pack_signs_ref(torch.sign(ref)))


def test_kernel_loop_with_time_shift():
    """Shift 3 (a non-uniform grid): the running times and dt read on the device follow the shifted grid."""
    head = RandomHead(seed=3)
    cond = randn(4, 4, COND_CHANNELS, seed=4)
    ref = sample_patch(head, cond, CHANNELS, 2.5, 12, generator_noise(torch.Generator().manual_seed(5), DEVICE),
                       shift=3.0)
    got = kernel_sample_patch(head, cond, 2.5, 12, generator_noise(torch.Generator().manual_seed(5), DEVICE), 3.0)
    assert_close(got.sample, ref[:2], 1e-5)
    assert torch.equal(got.tokens, torch.sign(ref))


def step_f64(pred, x, noise, t: float, dt: float, cfg: float, guided: bool) -> torch.Tensor:
    """Spec §1 step 3 in float64."""
    pred, x, noise = pred.double(), x.double(), noise.double()
    x_in = torch.cat([x, x]) if guided else x
    v = (pred - x_in) / max(1.0 - t, 0.05)
    if guided:
        v_c, v_u = v.chunk(2)
        v = v_u + cfg * (v_c - v_u)
    score = (t * v - x) / ((1.0 - t) ** 2 + t * (1.0 - t))
    drift = v + (1.0 - t) * score
    return x + drift * dt + (2.0 * (1.0 - t) * dt) ** 0.5 * noise


def step_f32_ieee(pred, x, noise, t: torch.Tensor, dt: torch.Tensor, cfg: float, guided: bool) -> torch.Tensor:
    """``step_from_prediction`` op by op in NumPy float32 (correctly rounded division and square root)."""
    f32 = np.float32
    pred, x, noise = pred.float().cpu().numpy(), x.cpu().numpy(), noise.cpu().numpy()
    t, dt, cfg = f32(t.item()), f32(dt.item()), f32(cfg)
    x_in = np.concatenate([x, x]) if guided else x
    v = (pred - x_in) / max(f32(1) - t, f32(0.05))
    if guided:
        v_c, v_u = v[: len(x)], v[len(x):]
        v = v_u + cfg * (v_c - v_u)
    sigma = f32(1) - t
    var = sigma * sigma - (t * f32(-1)) * sigma
    score = (t * v - x) / var
    drift = v + sigma * score
    noise_scale = np.sqrt(f32(2) * sigma * dt)
    return torch.from_numpy(x + drift * dt + noise_scale * noise)


def final_f64(pred, x, cfg: float, guided: bool, t: float, step_size: float) -> torch.Tensor:
    pred, x = pred.double(), x.double()
    x_in = torch.cat([x, x]) if guided else x
    v = (pred - x_in) / max(1.0 - t, 0.05)
    if guided:
        v_c, v_u = v.chunk(2)
        v = v_u + cfg * (v_c - v_u)
    return x + v * step_size


def step_inputs(batch: int, patch: int, channels: int, guided: bool, dtype: torch.dtype, seed: int):
    """x, noise ~ N(0, 1) float32; pred in (−1, 1)-ish in the head's dtype."""
    rows = batch * (2 if guided else 1)
    x = randn(batch, patch, channels, seed=seed)
    noise = randn(batch, patch, channels, seed=seed + 1)
    pred = randn(rows, patch, channels, seed=seed + 2, scale=0.5, dtype=dtype)
    return pred, x, noise


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("guided", [True, False], ids=["guided", "unguided"])
@pytest.mark.parametrize("step,num_steps,shift", [(0, 10, 1.0), (1, 50, 1.0), (49, 50, 1.0), (6, 7, 3.0)])
def test_step_matches_float64(dtype, guided, step, num_steps, shift):
    """One step, 3 x 16 x 24 = 1152 elements (two programs, the second partial), against float64 formulas at the
    float32 t and dt the kernel reads, the torch float32 reference step within 1e-6, and bitwise the NumPy float32
    re-derivation in the interpreter. Step 1 of 50 is one where torch's CPU sqrt is 1 ulp off."""
    cfg = 4.0
    pred, x, noise = step_inputs(3, 16, 24, guided, dtype, seed=10 + step)
    times = step_times(num_steps, shift, DEVICE)
    running = running_times(times)
    out = sampler_step(pred, x, noise, times, running, step, cfg, guided, out=poisoned(3, 16, 24))
    t, dt = running[step].item(), times[step + 1].item() - times[step].item()
    assert_close(out, step_f64(pred, x, noise, t, dt, cfg, guided), tolerance(dtype))
    dt32 = times[step + 1] - times[step]
    if dtype == torch.float32:
        assert_close(out, step_from_prediction(pred, x, running[step], dt32, noise, cfg, guided), 1e-6)
    if not ON_GPU:
        assert torch.equal(out, step_f32_ieee(pred, x, noise, running[step], dt32, cfg, guided))


def test_step_uses_running_time_not_grid_time():
    """t comes from ``running`` (the release's float32 running sum), dt from ``times``: a running time moved by
    one ulp changes the result, a grid point moved away from it does not."""
    pred, x, noise = step_inputs(2, 4, 32, True, torch.float32, seed=20)
    times = step_times(10, 1.0, DEVICE)
    running = running_times(times)
    base = sampler_step(pred, x, noise, times, running, 5, 2.0, True)
    nudged = running.clone()
    nudged[5] = torch.nextafter(running[5], torch.tensor(1.0, device=DEVICE))
    assert not torch.equal(sampler_step(pred, x, noise, times, nudged, 5, 2.0, True), base)
    grid_moved = times.clone()
    grid_moved[3] += 0.01
    assert torch.equal(sampler_step(pred, x, noise, grid_moved, running, 5, 2.0, True), base)


def test_step_in_place_and_halves():
    """``out=x`` updates in place; the conditional rows are the first half of pred (swapping halves changes v)."""
    pred, x, noise = step_inputs(5, 16, 32, True, torch.float32, seed=30)
    times = step_times(6, 1.0, DEVICE)
    running = running_times(times)
    expected = sampler_step(pred, x, noise, times, running, 2, 3.0, True)
    x_copy = x.clone()
    assert sampler_step(pred, x_copy, noise, times, running, 2, 3.0, True, out=x_copy).data_ptr() == x_copy.data_ptr()
    assert torch.equal(x_copy, expected)
    swapped = torch.cat(pred.chunk(2)[::-1])
    assert not torch.equal(sampler_step(swapped, x, noise, times, running, 2, 3.0, True), expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("guided", [True, False], ids=["guided", "unguided"])
def test_final_matches_float64_and_sign(dtype, guided):
    """Final Euler step at t = float32(0.95): sample vs float64, tokens == sign(sample) in pred's dtype for every
    row (halves equal when guided), packed words == packed signs; 5 x 16 x 64 elements cross the 1024 tile."""
    cfg, batch, patch, channels = 3.0, 5, 16, 64
    pred, x, _ = step_inputs(batch, patch, channels, guided, dtype, seed=40)
    rows = pred.shape[0]
    got = sampler_final(pred, x, cfg, guided, tokens_out=poisoned(rows, patch, channels, dtype=dtype),
                        packed_out=poisoned(rows, patch, 2, dtype=torch.int32),
                        sample_out=poisoned(batch, patch, channels))
    t_last = torch.tensor(0.95, dtype=torch.float32).item()
    assert_close(got.sample, final_f64(pred, x, cfg, guided, t_last, 0.05), tolerance(dtype))
    both = torch.cat([got.sample] * (2 if guided else 1))
    assert got.tokens.dtype == dtype and torch.equal(got.tokens, torch.sign(both).to(dtype))
    assert torch.equal(got.packed, pack_signs_ref(both))
    if not ON_GPU:
        assert torch.equal(got.sample, final_step_from_prediction(pred, x, cfg, guided))


def test_final_defaults_and_float32_tokens():
    """Without outs: tokens in pred's dtype, no packed words or sample; tokens_dtype picks float32."""
    pred, x, _ = step_inputs(3, 4, 32, False, torch.float32, seed=50)
    got = sampler_final(pred, x, 1.0, False)
    assert got.packed is None and got.sample is None and got.tokens.dtype == torch.float32
    assert torch.equal(got.tokens, torch.sign(final_step_from_prediction(pred, x, 1.0, False)))
    packed = sampler_final(pred, x, 1.0, False, pack=True, tokens_dtype=torch.float32).packed
    assert packed.shape == (3, 4, 1) and torch.equal(unpack_signs_ref(packed, torch.float32), got.tokens)


def test_final_exact_zero_sample():
    """A sample of exactly 0.0 (x = 0 and pred = 0 in both halves) gives token 0, like torch.sign, and packs as a
    clear bit (−1 after unpacking)."""
    pred, x, _ = step_inputs(2, 4, 32, True, torch.float32, seed=60)
    x[1, 2, 7] = 0.0
    pred[1, 2, 7] = 0.0
    pred[3, 2, 7] = 0.0
    got = sampler_final(pred, x, 2.0, True, pack=True, keep_sample=True)
    assert got.sample[1, 2, 7].item() == 0.0
    assert got.tokens[1, 2, 7].item() == 0.0 and got.tokens[3, 2, 7].item() == 0.0
    assert (got.tokens != 0).sum().item() == got.tokens.numel() - 2
    assert unpack_signs_ref(got.packed, torch.float32)[1, 2, 7].item() == -1.0


def test_last_step_size_sets_time_and_step():
    """last_step_size 0.1: v at t = float32(0.9), update x + 0.1·v."""
    pred, x, _ = step_inputs(3, 4, 32, True, torch.float32, seed=70)
    got = sampler_final(pred, x, 2.5, True, last_step_size=0.1, keep_sample=True)
    assert_close(got.sample, final_f64(pred, x, 2.5, True, torch.tensor(0.9).item(), 0.1), 1e-5)
    assert torch.equal(got.sample, final_step_from_prediction(pred, x, 2.5, True, last_step_size=0.1))


def per_row_cfg(batch: int, seed: int) -> torch.Tensor:
    """Distinct guidance scales in [1, 5), float32 on the device (rows at different steps of a schedule)."""
    gen = torch.Generator().manual_seed(seed)
    return (1.0 + 4.0 * torch.rand(batch, generator=gen)).to(DEVICE)


@pytest.mark.parametrize("patch,channels", [(16, 32), (5, 24)])
def test_step_per_row_cfg(patch, channels):
    """cfg ``[B]``: each row equals a launch of that row alone with its scale as a Python float (bitwise), the
    reference step with the same per-row tensor within 1e-6 (bitwise in NumPy float32 row by row), and unguided
    steps ignore it."""
    batch, step = 4, 3
    pred, x, noise = step_inputs(batch, patch, channels, True, torch.float32, seed=110 + patch)
    cfg = per_row_cfg(batch, seed=111)
    times = step_times(8, 1.0, DEVICE)
    running = running_times(times)
    out = sampler_step(pred, x, noise, times, running, step, cfg, True, out=poisoned(batch, patch, channels))
    dt32 = times[step + 1] - times[step]
    assert_close(out, step_from_prediction(pred, x, running[step], dt32, noise, cfg, True), 1e-6)
    for row in range(batch):
        rows = [row, batch + row]
        alone = sampler_step(pred[rows], x[row:row + 1], noise[row:row + 1], times, running, step,
                             cfg[row].item(), True)
        assert torch.equal(out[row:row + 1], alone), f"row {row} differs from its own launch"
        if not ON_GPU:
            assert torch.equal(alone, step_f32_ieee(pred[rows], x[row:row + 1], noise[row:row + 1], running[step],
                                                    dt32, cfg[row].item(), True))
    unguided = sampler_step(pred[:batch], x, noise, times, running, step, cfg, False)
    assert torch.equal(unguided, sampler_step(pred[:batch], x, noise, times, running, step, 1.0, False))


def test_final_per_row_cfg():
    """sampler_final with cfg ``[B]``: sample, tokens and packed words equal the per-row launches and the
    reference with the per-row tensor."""
    batch, patch, channels = 3, 16, 64
    pred, x, _ = step_inputs(batch, patch, channels, True, torch.float32, seed=120)
    cfg = per_row_cfg(batch, seed=121)
    got = sampler_final(pred, x, cfg, True, tokens_out=poisoned(2 * batch, patch, channels),
                        packed_out=poisoned(2 * batch, patch, 2, dtype=torch.int32),
                        sample_out=poisoned(batch, patch, channels))
    assert_close(got.sample, final_step_from_prediction(pred, x, cfg, True), 1e-6)
    for row in range(batch):
        rows = [row, batch + row]
        alone = sampler_final(pred[rows], x[row:row + 1], cfg[row].item(), True, pack=True, keep_sample=True)
        assert torch.equal(got.sample[row:row + 1], alone.sample)
        assert torch.equal(got.tokens[rows], alone.tokens) and torch.equal(got.packed[rows], alone.packed)


def test_per_row_cfg_errors():
    pred, x, noise = step_inputs(3, 4, 32, True, torch.float32, seed=130)
    times = step_times(5, 1.0, DEVICE)
    running = running_times(times)
    with pytest.raises(ValueError, match=r"sampler_step: cfg has shape \[2\], expected \[1\] \(one scale\) or \[3\]"):
        sampler_step(pred, x, noise, times, running, 0, torch.ones(2, device=DEVICE), True)
    with pytest.raises(ValueError, match=r"sampler_final: cfg has shape \[3, 1\], expected \[1\]"):
        sampler_final(pred, x, torch.ones(3, 1, device=DEVICE), True)
    with pytest.raises(ValueError, match="sampler_step: cfg must be contiguous"):
        sampler_step(pred, x, noise, times, running, 0, torch.ones(6, device=DEVICE)[::2], True)


def test_step_argument_errors():
    pred, x, noise = step_inputs(2, 4, 32, True, torch.float32, seed=80)
    times = step_times(5, 1.0, DEVICE)
    running = running_times(times)
    with pytest.raises(ValueError, match=r"sampler_step: pred has shape \[4, 4, 32\], expected \[2, 4, 32\]"):
        sampler_step(pred, x, noise, times, running, 0, 2.0, False)
    with pytest.raises(ValueError, match="sampler_step: x has dtype torch.float64"):
        sampler_step(pred, x.double(), noise, times, running, 0, 2.0, True)
    with pytest.raises(ValueError, match="sampler_step: pred has dtype torch.int32"):
        sampler_step(pred.int(), x, noise, times, running, 0, 2.0, True)
    with pytest.raises(ValueError, match="sampler_step: noise has dtype torch.bfloat16"):
        sampler_step(pred, x, noise.bfloat16(), times, running, 0, 2.0, True)
    with pytest.raises(ValueError, match="sampler_step: times has dtype torch.float64"):
        sampler_step(pred, x, noise, times.double(), running, 0, 2.0, True)
    with pytest.raises(ValueError, match=r"sampler_step: running has shape \[6\], expected \[5\]"):
        sampler_step(pred, x, noise, times, times, 0, 2.0, True)
    for bad_step in (5, -1, True, 2.0):
        with pytest.raises(ValueError, match=r"sampler_step: step is .*, expected a Python int in \[0, 5\)"):
            sampler_step(pred, x, noise, times, running, bad_step, 2.0, True)
    with pytest.raises(TypeError, match="sampler_step: guided must be a bool"):
        sampler_step(pred, x, noise, times, running, 0, 2.0, 1)
    with pytest.raises(TypeError, match="sampler_step: cfg must be a Python float or a float32 device tensor"):
        sampler_step(pred, x, noise, times, running, 0, "2.0", True)
    with pytest.raises(ValueError, match="sampler_step: cfg has dtype torch.float64"):
        sampler_step(pred, x, noise, times, running, 0, torch.tensor(2.0, dtype=torch.float64), True)
    # a device tensor scale (what a captured graph reads) equals the Python float
    assert torch.equal(sampler_step(pred, x, noise, times, running, 0, torch.tensor([2.0], device=x.device), True),
                       sampler_step(pred, x, noise, times, running, 0, 2.0, True))
    with pytest.raises(ValueError, match="sampler_step: x must be contiguous"):
        sampler_step(pred, x.transpose(1, 2).contiguous().transpose(1, 2), noise, times, running, 0, 2.0, True)
    with pytest.raises(ValueError, match="sampler_step: out has dtype torch.bfloat16"):
        sampler_step(pred, x, noise, times, running, 0, 2.0, True, out=torch.empty_like(x, dtype=torch.bfloat16))


def test_final_argument_errors():
    pred, x, _ = step_inputs(2, 4, 48, True, torch.float32, seed=90)
    with pytest.raises(ValueError, match="sampler_final: packing needs a channel count that is a multiple of 32, "
                                         "got C = 48"):
        sampler_final(pred, x, 2.0, True, pack=True)
    sampler_final(pred, x, 2.0, True)  # C = 48 is fine without packing
    with pytest.raises(ValueError, match=r"sampler_final: pred has shape \[4, 4, 48\], expected \[2, 4, 48\]"):
        sampler_final(pred, x, 2.0, False)
    with pytest.raises(ValueError, match="sampler_final: tokens_dtype is torch.int8"):
        sampler_final(pred, x, 2.0, True, tokens_dtype=torch.int8)
    with pytest.raises(ValueError, match=r"sampler_final: tokens_out has shape \[2, 4, 48\], expected \[4, 4, 48\]"):
        sampler_final(pred, x, 2.0, True, tokens_out=torch.empty(2, 4, 48, device=DEVICE))
    with pytest.raises(ValueError, match="sampler_final: last_step_size is 0.0"):
        sampler_final(pred, x, 2.0, True, last_step_size=0.0)
    pred32, x32, _ = step_inputs(2, 4, 32, True, torch.float32, seed=91)
    with pytest.raises(ValueError, match="sampler_final: packed_out has dtype torch.int64"):
        sampler_final(pred32, x32, 2.0, True, packed_out=torch.empty(4, 4, 1, dtype=torch.int64, device=DEVICE))
    with pytest.raises(ValueError, match=r"sampler_final: sample_out has shape \[4, 4, 32\], expected \[2, 4, 32\]"):
        sampler_final(pred32, x32, 2.0, True, sample_out=torch.empty(4, 4, 32, device=DEVICE))
