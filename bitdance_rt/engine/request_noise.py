"""Per-image noise keys for the engine's sampler: counter-based, so the same seed gives the same image whatever
shares the batch, whenever the request joined it.

Every Gaussian the head loop consumes is Philox 4x32-10 keyed by (image seed, AR step, row of the image, sample
index, element) — ``reference/philox_noise.py`` defines it. Image j of a request with seed s has seed ``s + j``
(row j of a ``generate`` call likewise). Its row 0 is the conditional row; row 1 is the class-conditional
null-class row, which draws its own noise only in the unguided step 0 (``rows_per_image = 2``). Sample index 0 is
the start sample, ``i + 1`` the noise of sampling step i.

Inside an AR step the loop draws in the kernels from the slots' key tensors (``FusedHead.sample_keyed``: the CUDA
sampler step makes its noise in registers; the other providers draw it with ``ops.keyed_noise`` first), so no
noise tensor is staged. ``RequestNoise.draw`` materialises the same noise for the eager paths that take a noise
tensor (the class-conditional step 0 at join). The reference backend draws from ``torch.Generator`` in the
release's order instead; the README says so.
"""

from __future__ import annotations

import torch

from ..ops import OpSet


class RequestNoise:
    """The noise keys of one request's images (one seed per image) on ``device``."""

    def __init__(self, seeds: list[int], device: torch.device, ops: OpSet):
        self.seeds = torch.tensor(list(seeds), dtype=torch.int64, device=device)
        self.ops = ops

    def draw(self, ar_step: int, rows_per_image: int, num_steps: int, patch: int, channels: int,
             out: torch.Tensor) -> torch.Tensor:
        """Noise of AR step ``ar_step`` into ``out [N + 1, rows_per_image·images, P, C]`` (float32; a view is fine):
        image j's row r is batch row ``r·images + j``, the sampler's order of conditional rows, then the others."""
        images = self.seeds.shape[0]
        seeds = self.seeds.repeat(rows_per_image)
        rows = torch.arange(rows_per_image, dtype=torch.int32, device=seeds.device).repeat_interleave(images)
        steps = torch.full_like(rows, ar_step)
        for i in range(num_steps + 1):
            out[i] = self.ops.keyed_noise(seeds, steps, rows, i, patch, channels)
        return out
