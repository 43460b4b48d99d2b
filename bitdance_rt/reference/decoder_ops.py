"""Reference of the token decoder's fused operations (the oracle the Triton kernels are tested against)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .token_decoder import swish


def group_norm_silu_ref(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, groups: int,
                        eps: float) -> torch.Tensor:
    """``swish(GroupNorm(groups, eps)(x)·weight + bias)`` for ``x [B, C, H, W]``: the decoder's norm-then-swish."""
    return swish(F.group_norm(x, groups, weight, bias, eps))
