"""The diffusers meanings of ``output_type``, made from the runtime's outputs.

- ``"pil"``: PIL images, the runtime's own pixels (``clamp(127.5·x + 128, 0, 255)`` truncated, as the release
  saves them), so they equal ``Runtime.generate(output_type="pil")``.
- ``"np"``: float32 NumPy ``[N, H, W, 3]`` in [0, 1] (diffusers' ``x·0.5 + 0.5`` clamped, of the decoder output).
- ``"pt"``: float ``[N, 3, H, W]`` in [0, 1] on the model's device (the same values, channels first).
- ``"latent"``: the binary tokens, int8 ``[N, h·w, C]`` of ±1 in generation order on the CPU (what
  ``Runtime.decode_tokens`` takes); nothing is decoded.

(The runtime's own ``"np"`` is uint8 and its ``"pt"`` is the decoder output in about [-1, 1].)
"""

from __future__ import annotations

import torch

from ..errors import InvalidRequestError

DIFFUSERS_OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def check_output_type(output_type) -> str:
    if output_type not in DIFFUSERS_OUTPUT_TYPES:
        raise InvalidRequestError(f"output_type={output_type!r}; BitDancePipeline gives 'pil', 'np' (float [0, 1], "
                                  "NHWC), 'pt' (float [0, 1], NCHW) or 'latent' (the binary tokens).",
                                  param="output_type")
    return output_type


def runtime_output_type(output_type: str) -> str:
    """What to ask the runtime for: PIL as is, the decoder's float output for np/pt, tokens for latent."""
    return {"pil": "pil", "np": "pt", "pt": "pt", "latent": "tokens"}[output_type]


def unit_range(decoded: torch.Tensor) -> torch.Tensor:
    """Decoder output (about [-1, 1]) -> [0, 1], diffusers' denormalisation."""
    return (decoded * 0.5 + 0.5).clamp(0, 1)


def diffusers_images(out, output_type: str):
    """The ``images`` of an ``ImagePipelineOutput`` from a runtime ``GenerationOutput`` asked with
    ``runtime_output_type(output_type)``."""
    if output_type == "latent":
        return out.tokens
    if output_type == "pil":
        return out.images
    x = unit_range(out.images)
    if output_type == "pt":
        return x
    return x.permute(0, 2, 3, 1).float().cpu().numpy()


def empty_images(output_type: str, height: int, width: int, num_tokens: int, channels: int):
    """A batch of no images in the shape ``output_type`` gives (an interrupted call; see the pipeline)."""
    import numpy as np

    if output_type == "pil":
        return []
    if output_type == "np":
        return np.zeros((0, height, width, 3), dtype=np.float32)
    if output_type == "pt":
        return torch.zeros(0, 3, height, width)
    return torch.zeros(0, num_tokens, channels, dtype=torch.int8)
