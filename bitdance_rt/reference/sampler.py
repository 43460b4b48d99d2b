"""The head's sampler: Euler–Maruyama steps of x-prediction flow matching, then one Euler step.

``sample_patch`` turns the conditioning of one AR step, ``c [rows, P, C_cond]``, into the final continuous sample
``[rows, P, C]`` (float32); ``sign`` of it gives the binary tokens. With guidance (``cfg > 1``) the rows are
``[conditional..., unconditional...]`` and both halves get the same guided sample.

Random numbers are consumed exactly as the release's sampler consumes them from the global generator, here from
a caller-owned source: one draw of shape ``[rows / m, P, C]`` for the start, then one of the same shape per
Euler–Maruyama step (1 + N draws per AR step). The arithmetic follows the release's float32 op order, so the
CPU float32 result is bitwise the release's. ``step_from_prediction`` and ``final_step_from_prediction`` are one
sampling step each, from the head's prediction to the new x: the oracle of the fused sampler-step kernel.
"""

from __future__ import annotations

from typing import Callable

import torch

HeadFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
NoiseFn = Callable[[tuple[int, ...]], torch.Tensor]

LAST_STEP_SIZE = 0.05
MIN_ONE_MINUS_T = 0.05


def generator_noise(generator: torch.Generator, device: torch.device | str) -> NoiseFn:
    """A noise source drawing standard normals from ``generator`` (on its own device), delivered on ``device``."""
    def draw(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=generator.device).to(device)
    return draw


def time_shift(t: torch.Tensor, shift: float, sigma: float = 1.0) -> torch.Tensor:
    """The release's time shift ``(1/s) / ((1/s) + (1/t - 1)**sigma)``; shift 1 is the identity up to rounding."""
    return (1 / shift) / ((1 / shift) + (1 / t - 1) ** sigma)


def step_times(num_steps: int, shift: float, device: torch.device | str,
               last_step_size: float = LAST_STEP_SIZE) -> torch.Tensor:
    """Times ``t_0..t_N`` (float32, ``[N + 1]``) from 0 to ``1 - last_step_size``, through the time shift."""
    t = torch.linspace(0, 1 - last_step_size, num_steps + 1, device=device, dtype=torch.float32)
    return time_shift(t, shift)


def guided_velocity(v: torch.Tensor, cfg: float | torch.Tensor, guided: bool) -> torch.Tensor:
    """``v_u + cfg·(v_c − v_u)`` over the two halves of ``v`` (float32); ``v`` itself when not guided. ``cfg``: a
    Python float, or a float32 tensor of one scale or one per row (``[B]``, B = half the rows of ``v``)."""
    v = v.to(torch.float32)
    if not guided:
        return v
    if isinstance(cfg, torch.Tensor):
        cfg = cfg.reshape(-1, 1, 1)
    v_cond, v_uncond = torch.chunk(v, 2, dim=0)
    return v_uncond + cfg * (v_cond - v_uncond)


def velocity(pred: torch.Tensor, x_in: torch.Tensor, t_rows: torch.Tensor) -> torch.Tensor:
    """Velocity from the x-prediction: ``(pred − x) / clamp_min(1 − t, 0.05)``, t per row."""
    return (pred - x_in) / (1 - t_rows.view(-1, 1, 1)).clamp_min(MIN_ONE_MINUS_T)


def euler_maruyama_update(x: torch.Tensor, v: torch.Tensor, t: torch.Tensor, dt: torch.Tensor,
                          noise: torch.Tensor) -> torch.Tensor:
    """One SDE step at time ``t`` (0-d float32 tensors ``t``, ``dt``), in the release's op order."""
    sigma = 1 - t
    var = sigma ** 2 - (t * -1) * sigma
    score = (t * v - x) / var
    drift = v + (1 - t) * score
    noise_scale = (2.0 * (1.0 - t) * dt) ** 0.5
    return x + drift * dt + noise_scale * noise


def running_times(times: torch.Tensor) -> torch.Tensor:
    """The time of each Euler–Maruyama step, ``[N]`` float32 from ``times [N + 1]``: the release's running sum
    ``t = 0; t += dt[i]`` in float32, which is not bitwise ``times[:-1]`` (its rounding differs)."""
    dts = times[1:] - times[:-1]
    running = torch.empty(dts.shape[0], device=times.device, dtype=torch.float32)
    t = torch.tensor(0.0, device=times.device, dtype=torch.float32)
    for i in range(dts.shape[0]):
        running[i] = t
        t += dts[i]
    return running


def step_from_prediction(pred: torch.Tensor, x: torch.Tensor, t: torch.Tensor, dt: torch.Tensor,
                         noise: torch.Tensor, cfg: float | torch.Tensor, guided: bool) -> torch.Tensor:
    """One Euler–Maruyama step from the head's x-prediction ``pred [m·B, P, C]`` of ``cat([x]*m)`` at time ``t``.

    x, noise: ``[B, P, C]`` float32; t, dt: 0-d float32; cfg a float or a float32 tensor ``[1]`` / ``[B]`` (per
    row). Returns the new ``x [B, P, C]`` (float32)."""
    x_in = torch.cat([x] * (2 if guided else 1), dim=0)
    v = guided_velocity(velocity(pred, x_in, t.expand(x_in.shape[0])), cfg, guided)
    return euler_maruyama_update(x, v, t, dt, noise)


def final_step_from_prediction(pred: torch.Tensor, x: torch.Tensor, cfg: float | torch.Tensor, guided: bool,
                               last_step_size: float = LAST_STEP_SIZE) -> torch.Tensor:
    """The last step, plain Euler without noise: ``x + v·last_step_size`` with v evaluated at
    ``t = 1 − last_step_size`` (rounded to float32). Shapes as ``step_from_prediction``; returns ``[B, P, C]``."""
    x_in = torch.cat([x] * (2 if guided else 1), dim=0)
    t_rows = torch.full((x_in.shape[0],), 1 - last_step_size, device=x.device, dtype=torch.float32)
    v = guided_velocity(velocity(pred, x_in, t_rows), cfg, guided)
    return x + v * last_step_size


def sample_patch(head: HeadFn, cond: torch.Tensor, token_channels: int, cfg: float, num_steps: int,
                 noise: NoiseFn, shift: float = 1.0, last_step_size: float = LAST_STEP_SIZE) -> torch.Tensor:
    """Run the sampler for one AR step.

    head: ``head(x [rows, P, C], t [rows], c [rows, P, C_cond]) -> [rows, P, C]``.
    cond: ``[rows, P, C_cond]``; with ``cfg > 1`` rows must be even (conditional half first).
    Returns the final sample ``[rows, P, C]`` in float32 (the guided half repeated over both halves).
    """
    guided = cfg > 1.0
    mult = 2 if guided else 1
    rows, patch = cond.shape[0], cond.shape[1]
    device = cond.device
    x = noise((rows // mult, patch, token_channels)).to(torch.float32)
    times = step_times(num_steps, shift, device, last_step_size)
    running = running_times(times)
    dts = times[1:] - times[:-1]
    t_rows = torch.zeros(rows, device=device, dtype=torch.float32)
    for i in range(num_steps):
        t_rows[:] = running[i]
        pred = head(torch.cat([x] * mult, dim=0), t_rows, cond)
        x = step_from_prediction(pred, x, running[i], dts[i], noise(tuple(x.shape)).to(torch.float32), cfg, guided)
    t_rows[:] = 1 - last_step_size
    pred = head(torch.cat([x] * mult, dim=0), t_rows, cond)
    x = final_step_from_prediction(pred, x, cfg, guided, last_step_size)
    return torch.cat([x] * mult, dim=0)


def linear_guidance(cfg: float, step: int, num_ar_steps: int) -> float:
    """Class-conditional guidance schedule: ``1 + (cfg − 1)·i/S`` (1.0 at step 0, i.e. unguided), or 1.0 when
    ``cfg <= 1``; evaluated in the release's float order."""
    if cfg <= 1.0:
        return 1.0
    return 1.0 + (cfg - 1.0) * step / num_ar_steps
