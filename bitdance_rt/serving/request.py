"""``ImageRequest``: what one caller of ``Runtime.submit`` asks for: one prompt (text-to-image) or one class label
(class-conditional), its size, sampling settings, seed and output type.

Fields left ``None`` take the model's defaults when the request is submitted (text-to-image 1024x1024, 50 sampling
steps, guidance 7.5; class-conditional 256x256, 100 steps and the release's guidance for the model). A fresh seed
is drawn when ``seed`` is ``None`` and reported in the result.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ..errors import InvalidRequestError


@dataclass(frozen=True)
class ImageRequest:
    prompt: str | None = None
    class_label: int | None = None
    negative_prompt: str | None = None
    height: int | None = None
    width: int | None = None
    num_images: int = 1
    num_sampling_steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    output_type: str = "pil"

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> "ImageRequest":
        """An ``ImageRequest`` from ``submit``'s keyword arguments; unknown names are refused with the list."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise InvalidRequestError(f"submit() got unknown argument(s) {', '.join(unknown)}; an ImageRequest has "
                                      f"{', '.join(names)}.")
        return cls(**kwargs)
