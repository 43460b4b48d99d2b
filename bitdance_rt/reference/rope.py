"""Rotary position embeddings in the two forms BitDance uses.

Rotate-half form (Qwen3 / HF-Llama, text-to-image backbone): channel ``i`` pairs with channel ``i + D/2``;
both see the angle ``position * inv_freq[i mod D/2]`` with ``inv_freq = 1 / theta^(2i/D)``.
:func:`rotate_half_tables` gives float32 cos/sin ``[..., T, D]``; :func:`apply_rotate_half` rotates
``[B, H, T, D]`` tensors.

Interleaved 2-D form (class-conditional models): channel ``2i`` pairs with ``2i + 1``. Of the ``D/2`` pairs, the
first ``D/4`` rotate by ``(x + 1) * freq_j`` and the last ``D/4`` by ``(y + 1) * freq_j`` with
``freq_j = 1 / base^(2j / (D/2))`` and ``(x, y) = (column + 0.5, row + 0.5)``; prefix (class and query) tokens get
angle 0. :func:`c2i_rope_tables` gives float32 cos/sin ``[prefix + grid^2, D/2]`` in generation order;
:func:`apply_interleaved` rotates ``[B, T, H, D]`` tensors in float32 (float64 for float64 inputs).

Both tables use the same float32 operations, in the same order, as the released code, so they match it bit for bit.
"""

from __future__ import annotations

import torch

from bitdance_rt.errors import InvalidRequestError
from bitdance_rt.reference.patch_order import patch_raster_order


def rotate_half_tables(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (float32, ``[..., T, head_dim]``) for int64 ``positions`` of shape ``[T]`` or ``[B, T]``."""
    if head_dim < 2 or head_dim % 2:
        raise InvalidRequestError(f"rotate-half RoPE needs an even head_dim >= 2, found {head_dim}")
    # The inverse frequencies are computed on the CPU, as transformers does when it builds its buffer.
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim
    inv_freq = (1.0 / (theta ** exponents)).to(positions.device)
    freqs = positions[..., None].to(torch.float32) * inv_freq
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos(), angles.sin()


def apply_rotate_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, H, T, D]`` by tables ``[T, D]`` or ``[B or 1, T, D]``, in ``x.dtype`` as transformers does."""
    cos = cos.to(x.dtype)
    sin = sin.to(x.dtype)
    if cos.ndim == 3:
        cos = cos.unsqueeze(1)
        sin = sin.unsqueeze(1)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def c2i_rope_tables(grid: int, head_dim: int, num_prefix_tokens: int, patch_size: int,
                    base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (float32, ``[num_prefix_tokens + grid * grid, head_dim // 2]``) in generation order."""
    if head_dim < 4 or head_dim % 4:
        raise InvalidRequestError(f"2-D RoPE needs a head_dim divisible by 4, found {head_dim}")
    if num_prefix_tokens < 0:
        raise InvalidRequestError(f"2-D RoPE: num_prefix_tokens must be >= 0, found {num_prefix_tokens}")
    pairs = head_dim // 2
    freqs = 1.0 / (base ** (torch.arange(0, pairs, 2, dtype=torch.float32) / pairs))
    centers = torch.arange(grid, dtype=torch.float32) + 0.5
    column = centers.repeat(grid)               # raster order: index = row * grid + column
    row = centers.repeat_interleave(grid)
    image_angles = torch.cat([(column + 1.0)[:, None] * freqs, (row + 1.0)[:, None] * freqs], dim=1)
    image_angles = image_angles[patch_raster_order(grid, grid, patch_size)]
    prefix_angles = torch.zeros(num_prefix_tokens, pairs, dtype=torch.float32)
    angles = torch.cat([prefix_angles, image_angles], dim=0)
    return angles.cos(), angles.sin()


def apply_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs ``(2i, 2i + 1)`` of ``x [B, T, H, D]`` by tables ``[T, D // 2]``; float32 math (float64 for
    float64 inputs), ``x.dtype`` out."""
    length, pairs = x.shape[1], x.shape[-1] // 2
    if x.shape[-1] % 2 or tuple(cos.shape) != (length, pairs) or tuple(sin.shape) != (length, pairs):
        raise InvalidRequestError(
            f"interleaved RoPE: x {tuple(x.shape)} needs cos/sin of shape ({length}, {pairs}), "
            f"found {tuple(cos.shape)} and {tuple(sin.shape)}")
    wide = torch.promote_types(x.dtype, torch.float32)
    pairs_of_x = x.to(wide).reshape(*x.shape[:-1], pairs, 2)
    even, odd = pairs_of_x[..., 0], pairs_of_x[..., 1]
    c = cos.to(wide)[None, :, None, :]
    s = sin.to(wide)[None, :, None, :]
    rotated = torch.stack([even * c - odd * s, odd * c + even * s], dim=-1)
    return rotated.flatten(-2).to(x.dtype)
