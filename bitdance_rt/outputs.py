"""What ``Runtime.generate`` returns, and the conversion of decoder output to pixels."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

OUTPUT_TYPES = ("pil", "np", "pt", "tokens")


@dataclass
class GenerationOutput:
    """``images``: list of PIL images (``"pil"``), uint8 array ``[N, H, W, 3]`` (``"np"``), the decoder's float
    output ``[N, 3, H, W]`` in about [-1, 1] (``"pt"``), or ``None`` (``"tokens"``).
    ``tokens``: int8 ``[N, h·w, C]`` of ±1 (0 where the head's sample was exactly 0), generation (patch-raster)
    order, on the CPU. ``seed``: the seed the noise came from (``None`` when a generator was passed)."""
    images: Any
    tokens: torch.Tensor
    height: int
    width: int
    seed: int | None
    timings: dict[str, float] = field(default_factory=dict)


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """Decoder output ``[N, 3, H, W]`` -> uint8 ``[N, H, W, 3]`` on the CPU: ``clamp(127.5·x + 128, 0, 255)``,
    truncated as the release does."""
    return torch.clamp(127.5 * x.float() + 128.0, 0, 255).permute(0, 2, 3, 1).to("cpu", dtype=torch.uint8)


def format_images(x: torch.Tensor, output_type: str) -> Any:
    if output_type == "pt":
        return x
    pixels = to_pixels(x).numpy()
    if output_type == "np":
        return pixels
    from PIL import Image

    return [Image.fromarray(p) for p in pixels]
