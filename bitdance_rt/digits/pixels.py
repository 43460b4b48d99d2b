"""The two pixel conversions between scikit-learn's 8x8 digits and the digits model's images.

scikit-learn's digits are 8x8 grey levels ``0..16`` (16 = full ink). The model sees them as RGB images of
``side x side`` pixels in ``[-1, 1]`` (black background -1, white ink +1, the three channels equal), upsampled
bilinearly. :func:`images_to_digits` goes back: the grey level of an image (the mean of its channels), averaged over
``side/8 x side/8`` blocks, scaled to ``0..16``: the data set's 64 features, which the digit classifier reads.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InvalidRequestError

DIGIT_SIDE = 8
DIGIT_MAX = 16.0


def digits_to_images(digits: torch.Tensor, side: int) -> torch.Tensor:
    """``[N, 64]`` or ``[N, 8, 8]`` grey levels 0..16 -> float32 ``[N, 3, side, side]`` in ``[-1, 1]``."""
    if digits.shape[-1] * (digits.shape[-2] if digits.ndim == 3 else 1) != DIGIT_SIDE * DIGIT_SIDE:
        raise InvalidRequestError(f"digits must be [N, 64] or [N, 8, 8] grey levels, got {tuple(digits.shape)}.")
    ink = digits.reshape(-1, 1, DIGIT_SIDE, DIGIT_SIDE).float() / DIGIT_MAX
    up = F.interpolate(ink, size=(side, side), mode="bilinear", align_corners=False)
    return (2.0 * up - 1.0).clamp(-1.0, 1.0).expand(-1, 3, -1, -1).contiguous()


def images_to_digits(images) -> torch.Tensor:
    """Images -> float32 ``[N, 64]`` grey levels 0..16 (the data set's features).

    ``images``: uint8 pixels ``[N, H, W, 3]`` (``output_type="np"``, NumPy or torch) or the decoder's float output
    ``[N, 3, H, W]`` in about ``[-1, 1]`` (``output_type="pt"``); H and W multiples of 8.
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise InvalidRequestError("images must be uint8 [N, H, W, 3] or float [N, 3, H, W]; got "
                                  f"{getattr(images, 'shape', type(images).__name__)}.")
    if images.dtype == torch.uint8:
        grey = images.float().mean(dim=-1, keepdim=True).permute(0, 3, 1, 2) / 255.0
    else:
        grey = ((images.float().mean(dim=1, keepdim=True) + 1.0) / 2.0).clamp(0.0, 1.0)
    h, w = grey.shape[-2:]
    if h % DIGIT_SIDE or w % DIGIT_SIDE:
        raise InvalidRequestError(f"images of {h}x{w} pixels do not pool to 8x8 digits; sides must be multiples of 8.")
    pooled = F.avg_pool2d(grey, (h // DIGIT_SIDE, w // DIGIT_SIDE))
    return (pooled * DIGIT_MAX).reshape(grey.shape[0], DIGIT_SIDE * DIGIT_SIDE)
