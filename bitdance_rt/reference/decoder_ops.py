"""Reference of the token decoder's fused operations (the oracle the Triton kernels are tested against)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .token_decoder import swish


def group_norm_silu_ref(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, groups: int,
                        eps: float) -> torch.Tensor:
    """``swish(GroupNorm(groups, eps)(x)·weight + bias)`` for ``x [B, C, H, W]``: the decoder's norm-then-swish."""
    return swish(F.group_norm(x, groups, weight, bias, eps))


def token_styled_group_norm_ref(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, groups: int,
                                eps: float) -> torch.Tensor:
    """``scale·GroupNorm(groups, eps)(x) + shift`` (affine-free norm) for ``x [B, C, H, W]``, ``scale, shift [B, C]``:
    the decoder's token-styled norm (``TokenStyledGroupNorm`` with its gamma/beta outputs), in its order of
    operations."""
    return scale[:, :, None, None] * F.group_norm(x, groups, eps=eps) + shift[:, :, None, None]
