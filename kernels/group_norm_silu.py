"""The token decoder's GroupNorms in one kernel, in either memory layout.

- ``group_norm_silu``: ``out = silu(GroupNorm(G, eps)(x)·w + b)`` (the residual blocks' and the output's norm then
  swish; ``w, b [C]`` or None for affine-free).
- ``token_styled_group_norm``: ``out = scale·GroupNorm(G, eps)(x) + shift`` with affine-free GroupNorm and
  ``scale, shift [B, C]`` per (image, channel): the decoder's token-styled norm (no swish follows it: its output is
  also the next residual block's shortcut).

Shapes: ``x, out [B, C, H, W]``, each either contiguous (NCHW) or channels-last contiguous (NHWC; what
``x.contiguous(memory_format=torch.channels_last)`` gives), C divisible by G. ``out`` may be ``x`` itself (in place):
every element is read and then written by the same program after its group's statistics are known.
One program per (image, group): the group's ``C/G`` channels × ``H·W`` pixels (NCHW: one run of consecutive
elements, walked in 1-D chunks of ``BLOCK``; NHWC: ``H·W`` runs of ``C/G`` channels, in tiles of ``BLOCK_P`` pixels
× ``BLOCK_C`` channels) are walked three times (the mean, the variance about it, then normalize, modulate,
swish and store), so any image size fits without a group's tile in registers. A group of more than
``SPLIT_ELEMENTS`` elements (the decoder's top levels: 8·1024² per group at 1024²) is cut into spans: a first kernel
writes each span's mean and squared deviations (float32 partials), the second merges them (Chan's formula) and
normalizes each span in a program of its own, so a batch of 2 images still fills the GPU. The spans depend only
on the group's size (never on the batch). Dtypes: float32, bfloat16 or
float16, alike; statistics and arithmetic in float32, one rounding at the store. Replaces PyTorch's group_norm,
sigmoid and multiply (three launches, two full-size temporaries), or group_norm, multiply and add.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bitdance_rt.ops.argument_checks import check_tensor
from bitdance_rt.platform import triton_interpreter_on
from bitdance_rt.reference.decoder_ops import group_norm_silu_ref, token_styled_group_norm_ref

REFERENCE = group_norm_silu_ref
REFERENCES = {"group_norm_silu": group_norm_silu_ref, "token_styled_group_norm": token_styled_group_norm_ref}
KERNEL = "group_norm_silu"
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BLOCK = 1024   # elements of one tile (BLOCK_P pixels x BLOCK_C channels)
INTERPRETER_BLOCK = 16384   # under the interpreter, per-operation overhead dominates: fewer, larger tiles
SPLIT_ELEMENTS = 1 << 16    # a group larger than this is normalized by several programs (the GPU's SMs stay busy)
INTERPRETER_SPLIT_ELEMENTS = 1 << 24   # ... but not under the interpreter, where each program costs much


@triton.jit
def _range_sum(x_base, lo, hi, first_channel, channels_per_group, x_pixel_stride, shift, SQUARES: tl.constexpr,
               CHANNELS_LAST: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Sum (or, with SQUARES, the sum of squared deviations from ``shift``) of one group's units ``[lo, hi)``: NHWC
    units are pixels of ``channels_per_group`` channels from ``first_channel``; NCHW units are elements from
    ``x_base`` (already at the group's first element)."""
    if CHANNELS_LAST:
        offs_p = tl.arange(0, BLOCK_P)
        offs_c = tl.arange(0, BLOCK_C)
        acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
        for c0 in range(0, channels_per_group, BLOCK_C):
            c = first_channel + c0 + offs_c
            c_in = (c0 + offs_c) < channels_per_group
            for p0 in range(lo, hi, BLOCK_P):
                p = p0 + offs_p
                inside = (p[:, None] < hi) & c_in[None, :]
                v = tl.load(x_base + p[:, None].to(tl.int64) * x_pixel_stride + c[None, :], mask=inside, other=0.0)
                v = v.to(tl.float32)
                if SQUARES:
                    d = tl.where(inside, v - shift, 0.0)
                    acc += d * d
                else:
                    acc += v
        total = tl.sum(tl.sum(acc, axis=1), axis=0)
    else:
        offs = tl.arange(0, BLOCK_P * BLOCK_C)
        acc1 = tl.zeros([BLOCK_P * BLOCK_C], dtype=tl.float32)
        for start in range(lo, hi, BLOCK_P * BLOCK_C):
            idx = start + offs
            inside = idx < hi
            v = tl.load(x_base + idx, mask=inside, other=0.0).to(tl.float32)
            if SQUARES:
                d = tl.where(inside, v - shift, 0.0)
                acc1 += d * d
            else:
                acc1 += v
        total = tl.sum(acc1, axis=0)
    return total


@triton.jit
def _group_stats_kernel(x_ptr, part_ptr, hw, channels_per_group, groups, x_image_stride, x_pixel_stride, span,
                        splits, CHANNELS_LAST: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per (image, group) and split of its units: the split's mean and sum of squared deviations about it."""
    pid = tl.program_id(0)
    split = tl.program_id(1)
    image = pid // groups
    first_channel = (pid % groups) * channels_per_group
    x_base = x_ptr + image.to(tl.int64) * x_image_stride
    if CHANNELS_LAST:
        total_units = hw
        unit = channels_per_group
    else:
        total_units = hw * channels_per_group
        unit = 1
        x_base += first_channel.to(tl.int64) * hw
    lo = split * span
    hi = tl.minimum(lo + span, total_units)
    n = ((hi - lo) * unit).to(tl.float32)
    mean = _range_sum(x_base, lo, hi, first_channel, channels_per_group, x_pixel_stride, 0.0, False, CHANNELS_LAST,
                      BLOCK_P, BLOCK_C) / n
    m2 = _range_sum(x_base, lo, hi, first_channel, channels_per_group, x_pixel_stride, mean, True, CHANNELS_LAST,
                    BLOCK_P, BLOCK_C)
    tl.store(part_ptr + (pid * splits + split) * 2, mean)
    tl.store(part_ptr + (pid * splits + split) * 2 + 1, m2)


@triton.jit
def _group_norm_silu_kernel(x_ptr, w_ptr, b_ptr, out_ptr, part_ptr, hw, channels, channels_per_group, groups,
                            x_image_stride, x_pixel_stride, out_image_stride, out_pixel_stride, span, splits, eps,
                            AFFINE: tl.constexpr, STYLED: tl.constexpr, SILU: tl.constexpr,
                            CHANNELS_LAST: tl.constexpr, SPLIT: tl.constexpr, SPLITS_BLOCK: tl.constexpr,
                            BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    # NCHW: a group is C/G·H·W consecutive elements (units), walked in 1-D chunks of BLOCK_P·BLOCK_C.
    # NHWC: a group is H·W pixels (units) of C/G consecutive channels (pixel stride C), in [BLOCK_P, BLOCK_C] tiles.
    # SPLIT: program (pid, split) normalizes units [split·span, +span) with statistics merged from the split
    # partials of _group_stats_kernel (Chan's formula); else one program per group computes them itself.
    pid = tl.program_id(0)
    split = tl.program_id(1)
    image = pid // groups
    first_channel = (pid % groups) * channels_per_group
    x_base = x_ptr + image.to(tl.int64) * x_image_stride
    out_base = out_ptr + image.to(tl.int64) * out_image_stride
    count = hw * channels_per_group
    if CHANNELS_LAST:
        total_units = hw
        unit = channels_per_group
    else:
        total_units = count
        unit = 1
        x_base += first_channel.to(tl.int64) * hw
        out_base += first_channel.to(tl.int64) * hw
    lo = split * span
    hi = tl.minimum(lo + span, total_units)
    if SPLIT:
        offs_s = tl.arange(0, SPLITS_BLOCK)
        s_in = offs_s < splits
        part_means = tl.load(part_ptr + (pid * splits + offs_s) * 2, mask=s_in, other=0.0)
        part_m2 = tl.load(part_ptr + (pid * splits + offs_s) * 2 + 1, mask=s_in, other=0.0)
        part_n = (tl.minimum((offs_s + 1) * span, total_units) - offs_s * span) * unit
        part_n = tl.where(s_in, part_n, 0).to(tl.float32)
        mean = tl.sum(part_n * part_means, axis=0) / count
        d = tl.where(s_in, part_means - mean, 0.0)
        m2 = tl.sum(part_m2, axis=0) + tl.sum(part_n * d * d, axis=0)
    else:
        mean = _range_sum(x_base, 0, total_units, first_channel, channels_per_group, x_pixel_stride, 0.0, False,
                          CHANNELS_LAST, BLOCK_P, BLOCK_C) / count
        m2 = _range_sum(x_base, 0, total_units, first_channel, channels_per_group, x_pixel_stride, mean, True,
                        CHANNELS_LAST, BLOCK_P, BLOCK_C)
    inv_std = 1.0 / tl.sqrt(m2 / count + eps)
    if CHANNELS_LAST:
        offs_p = tl.arange(0, BLOCK_P)
        offs_c = tl.arange(0, BLOCK_C)
        for c0 in range(0, channels_per_group, BLOCK_C):
            c = first_channel + c0 + offs_c
            c_in = (c0 + offs_c) < channels_per_group
            if AFFINE:
                w = tl.load(w_ptr + c, mask=c_in, other=1.0).to(tl.float32)
                b = tl.load(b_ptr + c, mask=c_in, other=0.0).to(tl.float32)
            if STYLED:
                w = tl.load(w_ptr + image * channels + c, mask=c_in, other=1.0).to(tl.float32)
                b = tl.load(b_ptr + image * channels + c, mask=c_in, other=0.0).to(tl.float32)
            for p0 in range(lo, hi, BLOCK_P):
                p = (p0 + offs_p).to(tl.int64)
                inside = (p[:, None] < hi) & c_in[None, :]
                v = tl.load(x_base + p[:, None] * x_pixel_stride + c[None, :], mask=inside, other=0.0)
                v = (v.to(tl.float32) - mean) * inv_std
                if AFFINE or STYLED:
                    v = v * w[None, :] + b[None, :]
                if SILU:
                    v = v / (1.0 + tl.exp(-v))
                tl.store(out_base + p[:, None] * out_pixel_stride + c[None, :], v.to(out_ptr.dtype.element_ty),
                         mask=inside)
    else:
        offs = tl.arange(0, BLOCK_P * BLOCK_C)
        for start in range(lo, hi, BLOCK_P * BLOCK_C):
            idx = start + offs
            inside = idx < hi
            v = (tl.load(x_base + idx, mask=inside, other=0.0).to(tl.float32) - mean) * inv_std
            if AFFINE:
                channel = first_channel + idx // hw
                v = v * tl.load(w_ptr + channel, mask=inside, other=1.0).to(tl.float32) \
                    + tl.load(b_ptr + channel, mask=inside, other=0.0).to(tl.float32)
            if STYLED:
                channel = image * channels + first_channel + idx // hw
                v = v * tl.load(w_ptr + channel, mask=inside, other=1.0).to(tl.float32) \
                    + tl.load(b_ptr + channel, mask=inside, other=0.0).to(tl.float32)
            if SILU:
                v = v / (1.0 + tl.exp(-v))
            tl.store(out_base + idx, v.to(out_ptr.dtype.element_ty), mask=inside)


def _layout(kernel: str, name: str, t: torch.Tensor) -> bool:
    """True for channels-last (NHWC) memory, False for contiguous NCHW; anything else is refused."""
    if t.is_contiguous():
        return False
    if t.is_contiguous(memory_format=torch.channels_last):
        return True
    raise ValueError(f"{kernel}: {name} has strides {list(t.stride())} for shape {list(t.shape)}: neither contiguous "
                     f"NCHW nor channels-last; call .contiguous() or .contiguous(memory_format=torch.channels_last)")


def _launch(kernel: str, x: torch.Tensor, w: torch.Tensor | None, b: torch.Tensor | None, groups: int, eps: float,
            out: torch.Tensor | None, styled: bool, silu: bool) -> torch.Tensor:
    check_tensor(kernel, "x", x, shape=(None, None, None, None), dtype=FLOAT_DTYPES, contiguous=False)
    batch, channels, height, width = x.shape
    if groups < 1 or channels % groups:
        raise ValueError(f"{kernel}: {channels} channels do not split into {groups} groups")
    channels_last = _layout(kernel, "x", x)
    if out is None:
        out = torch.empty_like(x, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    else:
        check_tensor(kernel, "out", out, shape=tuple(x.shape), dtype=x.dtype, device=x.device, contiguous=False)
        if _layout(kernel, "out", out) != channels_last and height * width > 1 and channels > 1:
            raise ValueError(f"{kernel}: out is {'NCHW' if channels_last else 'channels-last'} but x is "
                             f"{'channels-last' if channels_last else 'NCHW'}; pass out in x's memory layout")
    if x.numel() == 0:
        return out
    hw = height * width
    cpg = channels // groups
    interpreted = triton_interpreter_on()
    block = max(BLOCK, INTERPRETER_BLOCK) if interpreted else BLOCK
    block_c = min(triton.next_power_of_2(cpg), block) if channels_last else 1
    block_p = block // block_c
    affine = w is not None
    # units: NHWC pixels (of cpg channels), NCHW elements; a group above SPLIT_ELEMENTS is split into spans of units
    # normalized by programs of their own (statistics merged from per-span partials), a count that depends only
    # on the group's size, so an image's result never depends on the batch
    total_units, unit = (hw, cpg) if channels_last else (hw * cpg, 1)
    split_elements = max(SPLIT_ELEMENTS, INTERPRETER_SPLIT_ELEMENTS) if interpreted else SPLIT_ELEMENTS
    span = max(1, split_elements // unit)
    span = -(-span // block_p) * block_p if channels_last else -(-span // block) * block  # whole tiles
    splits = -(-total_units // span)
    if splits > 1:
        part = torch.empty(batch * groups * splits * 2, dtype=torch.float32, device=x.device)
        _group_stats_kernel[(batch * groups, splits)](
            x, part, hw, cpg, groups, x.stride(0), x.stride(3), span, splits, CHANNELS_LAST=channels_last,
            BLOCK_P=block_p, BLOCK_C=block_c, num_warps=4)
    else:
        part, span = x, total_units
    _group_norm_silu_kernel[(batch * groups, splits)](
        x, w if affine else x, b if affine else x, out, part, hw, channels, cpg, groups,
        x.stride(0), x.stride(3), out.stride(0), out.stride(3), span, splits, eps,
        AFFINE=affine and not styled, STYLED=styled, SILU=silu, CHANNELS_LAST=channels_last, SPLIT=splits > 1,
        SPLITS_BLOCK=triton.next_power_of_2(splits), BLOCK_P=block_p, BLOCK_C=block_c, num_warps=4)
    return out


def group_norm_silu(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, groups: int,
                    eps: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """``silu(group_norm(x, groups, weight, bias, eps))`` for ``x [B, C, H, W]`` (NCHW or channels-last);
    ``out`` (optional, may be ``x``) in x's layout."""
    if (weight is None) != (bias is None):
        raise ValueError(f"{KERNEL}: pass both weight and bias, or neither")
    if weight is not None:
        channels = x.shape[1] if x.ndim == 4 else None
        check_tensor(KERNEL, "weight", weight, shape=(channels,), dtype=x.dtype, device=x.device)
        check_tensor(KERNEL, "bias", bias, shape=(channels,), dtype=x.dtype, device=x.device)
    return _launch(KERNEL, x, weight, bias, groups, eps, out, styled=False, silu=True)


def token_styled_group_norm(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, groups: int, eps: float,
                            out: torch.Tensor | None = None) -> torch.Tensor:
    """``scale[:, :, None, None] · group_norm(x, groups, eps=eps) + shift[:, :, None, None]`` (affine-free norm) for
    ``x [B, C, H, W]`` (NCHW or channels-last), ``scale, shift [B, C]``; ``out`` (optional, may be ``x``) in x's
    layout."""
    name = "token_styled_group_norm"
    shape = (x.shape[0], x.shape[1]) if x.ndim == 4 else (None, None)
    check_tensor(name, "scale", scale, shape=shape, dtype=x.dtype, device=x.device)
    check_tensor(name, "shift", shift, shape=shape, dtype=x.dtype, device=x.device)
    return _launch(name, x, scale, shift, groups, eps, out, styled=True, silu=False)
