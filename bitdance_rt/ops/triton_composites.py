"""Triton-provider operations built from a Triton kernel plus PyTorch, for operations whose fused form exists only
in CUDA: ``sampler_step_keyed`` draws the keyed Philox noise with the PyTorch reference generator
(``reference/philox_noise.py``, on the device; capturable in a CUDA graph) and runs the Triton ``sampler_step``."""

from __future__ import annotations

from ..kernels.sampler_step import sampler_step
from ..reference.philox_noise import keyed_normal


def sampler_step_keyed(pred, x, times, running, step, cfg, guided, seeds, ar_steps, rows_in_request, out=None):
    """As ``cuda_ops.sampler_step.sampler_step_keyed``: one Euler–Maruyama step whose noise is sample ``step + 1``
    of the rows' keys."""
    noise = keyed_normal(seeds, ar_steps, rows_in_request, step + 1, x.shape[1], x.shape[2])
    return sampler_step(pred, x, noise, times, running, step, cfg, guided, out=out)
