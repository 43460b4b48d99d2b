"""The head's sampler against a float64 re-derivation, the release's float32 loop, and its random-number use.

A tiny deterministic "head" (a fixed random map of x, t and c, mixing the P tokens of a patch) stands in for the
diffusion head. Every noise draw of ``sample_patch`` is recorded; the whole run is then re-derived step by step in
float64 NumPy from the spec's formulas and compared with the float32 sampler. A second, independent float32 loop
written the way the release writes ``euler_maruyama`` (same op order, ``torch.randn`` / ``randn_like`` on one
explicit generator) must give a bitwise-equal result.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from bitdance_rt.reference.sampler import (
    generator_noise,
    linear_guidance,
    sample_patch,
    step_times,
    time_shift,
)

TOKEN_CHANNELS = 8
COND_CHANNELS = 12
PATCH = 4


pytestmark = pytest.mark.usefixtures("single_thread")


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class TinyHead:
    """``tanh(x·A + mean_P(x)·M + t·b + c·W)``: a fixed random map with float64 weights, run in ``x``'s dtype.

    Records every call's inputs (cloned: the sampler reuses its time tensor in place)."""

    def __init__(self, seed: int, channels: int = TOKEN_CHANNELS, cond_channels: int = COND_CHANNELS):
        g = generator(seed)
        self.a = torch.randn(channels, channels, generator=g, dtype=torch.float64) / channels ** 0.5
        self.m = torch.randn(channels, channels, generator=g, dtype=torch.float64) / channels ** 0.5
        self.b = torch.randn(channels, generator=g, dtype=torch.float64)
        self.w = torch.randn(cond_channels, channels, generator=g, dtype=torch.float64) / cond_channels ** 0.5
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.clone(), t.clone(), c.clone()))
        dt = x.dtype
        pre = (x @ self.a.to(dt) + x.mean(dim=1, keepdim=True) @ self.m.to(dt)
               + t.to(dt).view(-1, 1, 1) * self.b.to(dt) + c.to(dt) @ self.w.to(dt))
        return torch.tanh(pre)

    def numpy64(self, x: np.ndarray, t: float, c: np.ndarray) -> np.ndarray:
        """The same map in float64 for the re-derivation (one time for every row)."""
        out = self.__call__(torch.from_numpy(x), torch.full((x.shape[0],), t, dtype=torch.float64),
                            torch.from_numpy(c))
        self.calls.pop()
        return out.numpy()


class RecordingNoise:
    """Wraps a NoiseFn and keeps every requested shape and delivered tensor."""

    def __init__(self, source):
        self.source = source
        self.shapes: list[tuple[int, ...]] = []
        self.draws: list[torch.Tensor] = []

    def __call__(self, shape: tuple[int, ...]) -> torch.Tensor:
        out = self.source(shape)
        self.shapes.append(tuple(shape))
        self.draws.append(out.clone())
        return out


def shifted_time_f64(t: float, shift: float) -> float:
    """The time shift in the closed form t / (t + s·(1 − t)), float64 (equal to (1/s)/((1/s) + 1/t − 1))."""
    return t / (t + shift * (1.0 - t))


def derive_run_f64(head: TinyHead, cond: torch.Tensor, draws: list[torch.Tensor], cfg: float, num_steps: int,
                   shift: float) -> np.ndarray:
    """Spec §1 "Sampler", re-derived in float64 from the recorded noise; returns the sample for all rows."""
    guided = cfg > 1.0
    c = cond.to(torch.float64).numpy()
    t_all = [shifted_time_f64(0.95 * i / num_steps, shift) for i in range(num_steps + 1)]
    x = draws[0].to(torch.float64).numpy()

    def guided_v(t: float, x: np.ndarray) -> np.ndarray:
        x_in = np.concatenate([x, x]) if guided else x
        v = (head.numpy64(x_in, t, c) - x_in) / max(1.0 - t, 0.05)
        if not guided:
            return v
        v_c, v_u = v[: len(x)], v[len(x):]
        return v_u + cfg * (v_c - v_u)

    for i in range(num_steps):
        t, dt = t_all[i], t_all[i + 1] - t_all[i]
        v = guided_v(t, x)
        score = (t * v - x) / ((1.0 - t) ** 2 + t * (1.0 - t))
        drift = v + (1.0 - t) * score
        x = x + drift * dt + np.sqrt(2.0 * (1.0 - t) * dt) * draws[1 + i].to(torch.float64).numpy()
    x = x + 0.05 * guided_v(0.95, x)
    return np.concatenate([x, x]) if guided else x


def release_style_loop(head, cond: torch.Tensor, cfg: float, num_steps: int, shift: float,
                       gen: torch.Generator) -> torch.Tensor:
    """The release's euler_maruyama re-written: float32 tensors, its op order, noise from ``gen`` drawn with
    ``torch.randn`` for the start and ``randn_like`` per step (the calls the release makes on the global one)."""
    mult = 2 if cfg > 1.0 else 1
    start = torch.randn((cond.shape[0] // mult, cond.shape[1], TOKEN_CHANNELS), generator=gen)
    grid = torch.linspace(0, 1 - 0.05, num_steps + 1, dtype=torch.float32)
    grid = (1 / shift) / ((1 / shift) + (1 / grid - 1) ** 1.0)
    steps = grid[1:] - grid[:-1]
    now = torch.tensor(0.0, dtype=torch.float32)
    t_col = torch.zeros(cond.shape[0])
    x = start

    def velocity_of(x: torch.Tensor) -> torch.Tensor:
        both = torch.cat([x] * mult, dim=0)
        vel = (head(both, t_col, cond) - both) / (1 - t_col.view(-1, 1, 1)).clamp_min(0.05)
        vel = vel.to(torch.float32)
        if mult == 2:
            vc, vu = torch.chunk(vel, 2, dim=0)
            vel = vu + cfg * (vc - vu)
        return vel

    for i in range(num_steps):
        t_col[:] = now
        vel = velocity_of(x)
        ratio = now / 1
        variance = (1 - now) ** 2 - ratio * -1 * (1 - now)
        score = (ratio * vel - x) / variance
        drift = vel + (1 - now) * score
        scale = (2.0 * (1.0 - now) * steps[i]) ** 0.5
        x = x + drift * steps[i] + scale * torch.randn_like(x, generator=gen)
        now += steps[i]
    t_col[:] = 1 - 0.05
    x = x + velocity_of(x) * 0.05
    return torch.cat([x] * mult, dim=0)


def make_cond(rows: int, seed: int, patch: int = PATCH) -> torch.Tensor:
    return torch.randn(rows, patch, COND_CHANNELS, generator=generator(seed))


# Float32 vs float64, absolute, on samples of magnitude up to ~7: v divides by (1 − t) ≥ 0.05 and guidance
# multiplies differences by cfg, so float32 rounding reaches ~1e-5 (measured max 1.0e-5 at cfg 3.5, 6e-6 with
# shift 3); 5e-5 leaves a 5x margin while any formula slip (a wrong variance, dt or noise scale) moves x by > 1e-2.
F64_ATOL = 5e-5


@pytest.mark.parametrize("cfg,rows,num_steps,shift", [
    (3.5, 6, 10, 1.0),     # guided: 2B rows
    (1.0, 5, 10, 1.0),     # unguided: every row on its own
    (0.6, 4, 7, 1.0),      # cfg < 1 is also unguided
    (4.0, 4, 12, 3.0),     # time shift 3
    (2.0, 2, 9, 0.4),      # time shift < 1
])
def test_sampler_matches_float64_derivation(cfg, rows, num_steps, shift):
    head = TinyHead(seed=11)
    cond = make_cond(rows, seed=12)
    noise = RecordingNoise(generator_noise(generator(13), "cpu"))
    out = sample_patch(head, cond, TOKEN_CHANNELS, cfg, num_steps, noise, shift=shift)
    mult = 2 if cfg > 1.0 else 1

    assert out.dtype == torch.float32 and out.shape == (rows, PATCH, TOKEN_CHANNELS)
    assert noise.shapes == [(rows // mult, PATCH, TOKEN_CHANNELS)] * (1 + num_steps)
    assert len(head.calls) == num_steps + 1
    expected = derive_run_f64(head, cond, noise.draws, cfg, num_steps, shift)
    err = np.abs(out.to(torch.float64).numpy() - expected).max()
    assert err < F64_ATOL, f"float32 sampler vs float64 derivation: max abs diff {err}"


@pytest.mark.parametrize("cfg,rows", [(3.0, 4), (1.0, 3)])
def test_single_token_patches_match_float64_derivation(cfg, rows):
    """P = 1 (the class-conditional 1x heads): conditioning [rows, 1, C_cond], noise [rows/m, 1, C]."""
    head = TinyHead(seed=14)
    cond = make_cond(rows, seed=15, patch=1)
    noise = RecordingNoise(generator_noise(generator(16), "cpu"))
    out = sample_patch(head, cond, TOKEN_CHANNELS, cfg, 8, noise)
    mult = 2 if cfg > 1.0 else 1
    assert out.shape == (rows, 1, TOKEN_CHANNELS)
    assert noise.shapes == [(rows // mult, 1, TOKEN_CHANNELS)] * 9
    expected = derive_run_f64(head, cond, noise.draws, cfg, 8, 1.0)
    assert np.abs(out.to(torch.float64).numpy() - expected).max() < F64_ATOL


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_head_sees_float32_accumulated_times(shift):
    """Step i evaluates the head at the float32 running sum of the dts, then at float32(0.95) for the last step."""
    num_steps = 10
    head = TinyHead(seed=21)
    sample_patch(head, make_cond(4, 22), TOKEN_CHANNELS, 2.0, num_steps, generator_noise(generator(23), "cpu"),
                 shift=shift)
    grid = step_times(num_steps, shift, "cpu")
    dts = grid[1:] - grid[:-1]
    running = torch.tensor(0.0)
    for i, (x_in, t_in, _) in enumerate(head.calls[:-1]):
        assert x_in.shape == (4, PATCH, TOKEN_CHANNELS) and torch.equal(x_in[:2], x_in[2:])
        assert torch.equal(t_in, torch.full((4,), running.item()))
        # the running sum stays within 1e-6 of the exact shifted grid point
        assert abs(running.item() - shifted_time_f64(0.95 * i / num_steps, shift)) < 1e-6
        running = running + dts[i]
    assert torch.equal(head.calls[-1][1], torch.full((4,), 0.95, dtype=torch.float32))


def test_step_times_and_time_shift():
    """t_all = shift(linspace(0, 0.95, N+1)) in float32; shift 1 leaves linspace unchanged to 1 ulp."""
    plain = step_times(20, 1.0, "cpu")
    assert plain.dtype == torch.float32 and plain.shape == (21,)
    assert plain[0].item() == 0.0
    lin = torch.linspace(0, 0.95, 21, dtype=torch.float32)
    assert torch.allclose(plain, lin, rtol=2.4e-7, atol=0.0)
    shifted = step_times(8, 3.0, "cpu")
    for i in range(9):
        assert abs(shifted[i].item() - shifted_time_f64(0.95 * i / 8, 3.0)) < 1e-6
    # the release's formula, evaluated on a float64 grid, also equals the closed form
    grid64 = torch.linspace(0.05, 0.95, 7, dtype=torch.float64)
    closed = torch.tensor([shifted_time_f64(v, 2.5) for v in grid64.tolist()], dtype=torch.float64)
    assert torch.allclose(time_shift(grid64, 2.5), closed, rtol=1e-14, atol=0.0)


@pytest.mark.parametrize("cfg,rows,num_steps,shift", [
    (3.5, 6, 10, 1.0),
    (1.0, 5, 10, 1.0),
    (0.6, 3, 6, 1.0),
    (4.0, 4, 12, 3.0),
    (7.5, 2, 50, 1.0),   # the T2I default step count
])
def test_sampler_bitwise_equals_release_loop(cfg, rows, num_steps, shift):
    """Same head, same seed: sample_patch with generator_noise equals the release-style loop bit for bit."""
    cond = make_cond(rows, seed=31)
    ours = sample_patch(TinyHead(seed=32), cond, TOKEN_CHANNELS, cfg, num_steps,
                        generator_noise(generator(33), "cpu"), shift=shift)
    theirs = release_style_loop(TinyHead(seed=32), cond, cfg, num_steps, shift, generator(33))
    assert torch.equal(ours, theirs)


def test_sampler_bitwise_equals_release_loop_given_same_noise():
    """Feeding the release-style loop's own draws back through a NoiseFn gives the same bits too."""
    cond = make_cond(4, seed=41)
    replay_gen = generator(42)
    theirs = release_style_loop(TinyHead(seed=43), cond, 2.5, 8, 1.0, replay_gen)
    record_gen = generator(42)
    draws = [torch.randn((2, PATCH, TOKEN_CHANNELS), generator=record_gen) for _ in range(9)]
    queue = iter(draws)
    ours = sample_patch(TinyHead(seed=43), cond, TOKEN_CHANNELS, 2.5, 8, lambda shape: next(queue))
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("cfg,rows,num_steps", [(3.0, 6, 7), (1.0, 4, 5)])
def test_noise_stream_is_a_fresh_generator_replayed(cfg, rows, num_steps):
    """1 + N draws of [rows/m, P, C], in order, equal to torch.randn calls on a fresh generator with the same seed
    (the stream the release takes from the global generator after seeding it), and nothing more is consumed."""
    seed = 1234
    gen = generator(seed)
    noise = RecordingNoise(generator_noise(gen, "cpu"))
    sample_patch(TinyHead(seed=51), make_cond(rows, 52), TOKEN_CHANNELS, cfg, num_steps, noise)
    mult = 2 if cfg > 1.0 else 1
    shape = (rows // mult, PATCH, TOKEN_CHANNELS)
    assert noise.shapes == [shape] * (1 + num_steps)
    replay = generator(seed)
    for drawn in noise.draws:
        assert drawn.dtype == torch.float32
        assert torch.equal(drawn, torch.randn(shape, generator=replay))
    assert torch.equal(gen.get_state(), replay.get_state())


def test_guided_halves_equal_and_rows_follow_guidance():
    """cfg > 1: the output repeats the guided half; changing an unconditional row changes its conditional twin."""
    cond = make_cond(6, seed=61)
    out = sample_patch(TinyHead(seed=62), cond, TOKEN_CHANNELS, 3.0, 6, generator_noise(generator(63), "cpu"))
    assert torch.equal(out[:3], out[3:])
    moved = cond.clone()
    moved[4] += 1.0
    out2 = sample_patch(TinyHead(seed=62), moved, TOKEN_CHANNELS, 3.0, 6, generator_noise(generator(63), "cpu"))
    assert torch.equal(out2[[0, 2]], out[[0, 2]])
    assert not torch.equal(out2[1], out[1])


@pytest.mark.parametrize("cfg", [1.0, 0.3])
def test_unguided_rows_are_independent(cfg):
    """cfg <= 1: noise covers every row and each row depends on its own conditioning only."""
    rows = 4
    cond = make_cond(rows, seed=71)
    noise = RecordingNoise(generator_noise(generator(72), "cpu"))
    out = sample_patch(TinyHead(seed=73), cond, TOKEN_CHANNELS, cfg, 5, noise)
    assert noise.shapes[0] == (rows, PATCH, TOKEN_CHANNELS)
    assert not torch.equal(out[:2], out[2:])
    moved = cond.clone()
    moved[2] -= 0.7
    out2 = sample_patch(TinyHead(seed=73), moved, TOKEN_CHANNELS, cfg, 5, generator_noise(generator(72), "cpu"))
    assert torch.equal(out2[[0, 1, 3]], out[[0, 1, 3]])
    assert not torch.equal(out2[2], out[2])


def test_cfg_below_one_equals_cfg_one():
    cond = make_cond(4, seed=81)
    low = sample_patch(TinyHead(seed=82), cond, TOKEN_CHANNELS, 0.5, 6, generator_noise(generator(83), "cpu"))
    one = sample_patch(TinyHead(seed=82), cond, TOKEN_CHANNELS, 1.0, 6, generator_noise(generator(83), "cpu"))
    assert torch.equal(low, one)


def test_linear_guidance_schedule():
    """cfg_i = 1 + (cfg − 1)·i/S: exactly 1.0 at step 0, within 1 ulp of the exact rational value elsewhere,
    and bitwise the release's float expression ``start + (cfg − start)·i / S``; cfg <= 1 gives 1.0."""
    for cfg in (3.2, 3.9, 4.0, 4.55, 6.1):
        for steps in (256, 64, 16):
            assert linear_guidance(cfg, 0, steps) == 1.0
            for i in range(steps):
                got = linear_guidance(cfg, i, steps)
                start = 1.0
                assert got == start + (cfg - start) * i / steps
                exact = 1 + (Fraction(cfg) - 1) * Fraction(i, steps)
                assert abs(Fraction(got) - exact) <= Fraction(np.spacing(got))
    assert linear_guidance(4.0, 64, 256) == 1.75
    assert linear_guidance(4.0, 255, 256) == 1.0 + 3.0 * 255 / 256
    for cfg in (1.0, 0.5):
        assert linear_guidance(cfg, 0, 256) == 1.0
        assert linear_guidance(cfg, 100, 256) == 1.0


def test_step_zero_guidance_samples_all_rows_unguided():
    """With the linear schedule the first AR step has scale 1.0: the sampler draws noise for all 2B rows."""
    rows = 4
    noise = RecordingNoise(generator_noise(generator(91), "cpu"))
    scale = linear_guidance(4.0, 0, 256)
    sample_patch(TinyHead(seed=92), make_cond(rows, 93), TOKEN_CHANNELS, scale, 3, noise)
    assert noise.shapes == [(rows, PATCH, TOKEN_CHANNELS)] * 4
