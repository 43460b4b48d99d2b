"""The token decoder's GroupNorm followed by swish in one kernel: ``out = silu(GroupNorm(G, eps)(x)·w + b)``.

Shapes: ``x, out [B, C, H, W]`` contiguous (NCHW), C divisible by G; ``weight, bias [C]`` or None (affine-free).
One program per (image, group): a group is ``C/G·H·W`` consecutive elements, walked in ``BLOCK``-element chunks
three times (the mean, the variance about it, then normalize-modulate-swish and store), so any image size fits
without a tile per group in registers. Dtypes: float32, bfloat16 or float16, alike; statistics and arithmetic in
float32, one rounding at the store. Replaces PyTorch's group_norm, sigmoid and multiply (three launches, two
full-size temporaries).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bitdance_rt.ops.argument_checks import check_tensor
from bitdance_rt.reference.decoder_ops import group_norm_silu_ref

REFERENCE = group_norm_silu_ref
KERNEL = "group_norm_silu"
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BLOCK = 1024


@triton.jit
def _group_norm_silu_kernel(x_ptr, w_ptr, b_ptr, out_ptr, group_size, hw, channels_per_group, groups, eps,
                            AFFINE: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    base = pid.to(tl.int64) * group_size
    first_channel = (pid % groups) * channels_per_group
    offs = tl.arange(0, BLOCK)
    total = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, group_size, BLOCK):
        idx = start + offs
        total += tl.load(x_ptr + base + idx, mask=idx < group_size, other=0.0).to(tl.float32)
    mean = tl.sum(total, axis=0) / group_size
    spread = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, group_size, BLOCK):
        idx = start + offs
        v = tl.load(x_ptr + base + idx, mask=idx < group_size, other=0.0).to(tl.float32)
        d = tl.where(idx < group_size, v - mean, 0.0)
        spread += d * d
    inv_std = 1.0 / tl.sqrt(tl.sum(spread, axis=0) / group_size + eps)
    for start in range(0, group_size, BLOCK):
        idx = start + offs
        inside = idx < group_size
        v = (tl.load(x_ptr + base + idx, mask=inside, other=0.0).to(tl.float32) - mean) * inv_std
        if AFFINE:
            channel = first_channel + idx // hw
            v = v * tl.load(w_ptr + channel, mask=inside, other=1.0).to(tl.float32) \
                + tl.load(b_ptr + channel, mask=inside, other=0.0).to(tl.float32)
        tl.store(out_ptr + base + idx, (v / (1.0 + tl.exp(-v))).to(out_ptr.dtype.element_ty), mask=inside)


def group_norm_silu(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, groups: int,
                    eps: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """``silu(group_norm(x, groups, weight, bias, eps))`` for NCHW ``x [B, C, H, W]``."""
    check_tensor(KERNEL, "x", x, shape=(None, None, None, None), dtype=FLOAT_DTYPES)
    batch, channels, height, width = x.shape
    if channels % groups:
        raise ValueError(f"{KERNEL}: {channels} channels do not split into {groups} groups")
    if (weight is None) != (bias is None):
        raise ValueError(f"{KERNEL}: pass both weight and bias, or neither")
    if weight is not None:
        check_tensor(KERNEL, "weight", weight, shape=(channels,), dtype=x.dtype, device=x.device)
        check_tensor(KERNEL, "bias", bias, shape=(channels,), dtype=x.dtype, device=x.device)
    if out is None:
        out = torch.empty_like(x)
    else:
        check_tensor(KERNEL, "out", out, shape=tuple(x.shape), dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return out
    hw = height * width
    affine = weight is not None
    _group_norm_silu_kernel[(batch * groups,)](
        x, weight if affine else x, bias if affine else x, out, channels // groups * hw, hw, channels // groups,
        groups, eps, AFFINE=affine, BLOCK=BLOCK, num_warps=4)
    return out
