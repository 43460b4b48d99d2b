"""The head's final layer, alone or fused with the sampler step that consumes it (Triton).

``final_layer``: ``pred = map(LN(x)·(1+scale)+shift) · Wᵀ + b)`` with an affine-free LayerNorm over D and ``map``
``2·sigmoid − 1`` for sigmoid-output models (else the identity). ``final_layer_step``: the same for the conditional
and the unconditional rows of each patch element, then ``sampler_step``'s guided Euler–Maruyama step from that
prediction, writing the new sample; the prediction never leaves registers.

Shapes: x ``[N, D]`` (the last block's output, N = m·B·P, conditional rows first when guided, m = 2), scale and
shift ``[N, D]`` (row-strided views allowed: the final chunks of the head's adaLN output), weight ``[C, D]``, bias
``[C]`` or None; pred ``[N, C]``; sample and noise ``[B, P, C]`` float32; times, running, step and cfg as in
``kernels/sampler_step.py``. x, scale, shift, weight and bias share one dtype (float32, bfloat16 or float16).

Each program takes ``BLOCK_M`` rows (of the sample: each with its conditional and, guided, unconditional hidden
row). D is reduced in chunks of ``BLOCK_D`` columns, so any width fits: one pass for the mean, one for the centred
variance (as ``layernorm_modulate``), then one that normalises, modulates, rounds to the weight's dtype (the
unfused chain stores that tensor) and accumulates ``tl.dot`` into ``[BLOCK_M, C]`` float32. The linear's output and
the sigmoid map are rounded to the weight's dtype like the unfused ops' stores, then the step runs in float32 with
``sampler_step``'s own helpers (``div_rn``, ``sqrt_rn``, no mul-add contraction): given the same prediction, the
step is bit for bit ``sampler_step``'s, and both kernels (no contraction either) make the same prediction, so
``final_layer_step`` equals ``final_layer`` followed by ``sampler_step`` bit for bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bitdance_rt.ops.argument_checks import check_rows, check_tensor
from bitdance_rt.ops.sampler_contract import cfg_per_row, check_guidance, check_times, step_output
from bitdance_rt.kernels.sampler_step import euler_maruyama_of, guided_velocity_from
from bitdance_rt.reference.head_ops import final_layer_ref, final_layer_step_ref

REFERENCE = final_layer_ref
REFERENCE_STEP = final_layer_step_ref
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BLOCK_M = 16        # rows per program (tl.dot's smallest M)
BLOCK_D = 128       # columns of x per reduction chunk
MIN_DOT = 16        # tl.dot's smallest tile side
MAX_CHANNELS = 256  # output channels held in one tile (the released models have 16 or 32)
NUM_WARPS = 4


@triton.jit
def _final_rows(x_ptr, scale_ptr, shift_ptr, w_ptr, b_ptr, row, row_in, x_stride, scale_stride, shift_stride,
                width, channels, eps, HAS_BIAS: tl.constexpr, SIGMOID: tl.constexpr, IEEE: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr):
    """The final layer's prediction ``[BLOCK_M, BLOCK_C]`` (float32 values of the weight's dtype) for the hidden
    rows ``row`` (int64 ``[BLOCK_M]``, valid where ``row_in``)."""
    r, r_in = row[:, None], row_in[:, None]
    d = tl.arange(0, BLOCK_D)
    total = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for d0 in range(0, width, BLOCK_D):
        cols = d0 + d[None, :]
        total += tl.load(x_ptr + r * x_stride + cols, mask=r_in & (cols < width), other=0.0).to(tl.float32)
    mean = (tl.sum(total, axis=1) / width)[:, None]
    total = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for d0 in range(0, width, BLOCK_D):
        cols = d0 + d[None, :]
        inside = r_in & (cols < width)
        x = tl.load(x_ptr + r * x_stride + cols, mask=inside, other=0.0).to(tl.float32)
        centred = tl.where(inside, x - mean, 0.0)
        total += centred * centred
    rstd = tl.rsqrt((tl.sum(total, axis=1) / width)[:, None] + eps)
    c = tl.arange(0, BLOCK_C)
    c_in = c < channels
    acc = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    for d0 in range(0, width, BLOCK_D):
        cols = d0 + d[None, :]
        inside = r_in & (cols < width)
        x = tl.load(x_ptr + r * x_stride + cols, mask=inside, other=0.0).to(tl.float32)
        scale = tl.load(scale_ptr + r * scale_stride + cols, mask=inside, other=0.0).to(tl.float32)
        shift = tl.load(shift_ptr + r * shift_stride + cols, mask=inside, other=0.0).to(tl.float32)
        h = tl.where(inside, (x - mean) * rstd * (1.0 + scale) + shift, 0.0).to(w_ptr.dtype.element_ty)
        k = d0 + d[:, None]
        w = tl.load(w_ptr + c[None, :] * width + k, mask=(k < width) & c_in[None, :], other=0.0)  # [BLOCK_D, C]
        if IEEE:
            acc = tl.dot(h, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(h, w, acc)
    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=c_in, other=0.0).to(tl.float32)[None, :]
    pred = acc.to(w_ptr.dtype.element_ty).to(tl.float32)
    if SIGMOID:
        pred = (2.0 / (1.0 + tl.exp(-pred)) - 1.0).to(w_ptr.dtype.element_ty).to(tl.float32)
    return pred


@triton.jit
def _final_layer_kernel(x_ptr, scale_ptr, shift_ptr, w_ptr, b_ptr, out_ptr, x_stride, scale_stride, shift_stride,
                        rows, width, channels, eps, HAS_BIAS: tl.constexpr, SIGMOID: tl.constexpr,
                        IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr):
    row = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_in = row < rows
    pred = _final_rows(x_ptr, scale_ptr, shift_ptr, w_ptr, b_ptr, row, row_in, x_stride, scale_stride,
                       shift_stride, width, channels, eps, HAS_BIAS, SIGMOID, IEEE, BLOCK_M, BLOCK_D, BLOCK_C)
    c = tl.arange(0, BLOCK_C)[None, :]
    tl.store(out_ptr + row[:, None] * channels + c, pred.to(out_ptr.dtype.element_ty),
             mask=row_in[:, None] & (c < channels))


@triton.jit(do_not_specialize=["step"])
def _final_layer_step_kernel(x_ptr, scale_ptr, shift_ptr, w_ptr, b_ptr, sample_ptr, noise_ptr, times_ptr,
                             running_ptr, out_ptr, step, cfg_ptr, x_stride, scale_stride, shift_stride, rows, width,
                             channels, patch, eps, HAS_BIAS: tl.constexpr, SIGMOID: tl.constexpr,
                             IEEE: tl.constexpr, GUIDED: tl.constexpr, CFG_PER_ROW: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr):
    row = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)  # rows of the sample [B·P, C]
    row_in = row < rows
    pred = _final_rows(x_ptr, scale_ptr, shift_ptr, w_ptr, b_ptr, row, row_in, x_stride, scale_stride,
                       shift_stride, width, channels, eps, HAS_BIAS, SIGMOID, IEEE, BLOCK_M, BLOCK_D, BLOCK_C)
    pred_u = pred
    if GUIDED:  # the unconditional hidden row of the same patch element: B·P rows further
        pred_u = _final_rows(x_ptr, scale_ptr, shift_ptr, w_ptr, b_ptr, row + rows, row_in, x_stride,
                             scale_stride, shift_stride, width, channels, eps, HAS_BIAS, SIGMOID, IEEE, BLOCK_M,
                             BLOCK_D, BLOCK_C)
    c = tl.arange(0, BLOCK_C)[None, :]
    offs = row[:, None] * channels + c
    mask = row_in[:, None] & (c < channels)
    t = tl.load(running_ptr + step)
    dt = tl.load(times_ptr + step + 1) - tl.load(times_ptr + step)
    x = tl.load(sample_ptr + offs, mask=mask, other=0.0)
    noise = tl.load(noise_ptr + offs, mask=mask, other=0.0)
    v = guided_velocity_from(pred, pred_u, offs, mask, x, 1.0 - t, cfg_ptr, patch * channels, GUIDED, CFG_PER_ROW)
    tl.store(out_ptr + offs, euler_maruyama_of(x, v, t, dt, noise), mask=mask)


def _check_final(kernel: str, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor | None, eps: float, sigmoid: bool) -> None:
    check_tensor(kernel, "x", x, shape=(None, None), dtype=FLOAT_DTYPES, contiguous=False)
    rows, width = x.shape
    check_rows(kernel, "x", x, (rows, width), x.dtype, x.device)
    check_rows(kernel, "scale", scale, (rows, width), x.dtype, x.device)
    check_rows(kernel, "shift", shift, (rows, width), x.dtype, x.device)
    check_tensor(kernel, "weight", weight, shape=(None, width), dtype=x.dtype, device=x.device)
    channels = weight.shape[0]
    if not 0 < channels <= MAX_CHANNELS:
        raise ValueError(f"{kernel}: weight has {channels} output channels, expected 1..{MAX_CHANNELS} (the token "
                         "channels, held in one tile); use layernorm_modulate and a GEMM for wider outputs")
    if bias is not None:
        check_tensor(kernel, "bias", bias, shape=(channels,), dtype=x.dtype, device=x.device)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"{kernel}: eps is {eps!r}, expected a positive float such as 1e-6")
    if not isinstance(sigmoid, bool):
        raise TypeError(f"{kernel}: sigmoid must be a bool (the model's sigmoid_output), got "
                        f"{type(sigmoid).__name__}")


def _meta(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float, sigmoid: bool) -> dict:
    return dict(HAS_BIAS=bias is not None, SIGMOID=sigmoid, IEEE=weight.dtype == torch.float32, BLOCK_M=BLOCK_M,
                BLOCK_D=min(BLOCK_D, max(MIN_DOT, triton.next_power_of_2(x.shape[1]))),
                BLOCK_C=max(MIN_DOT, triton.next_power_of_2(weight.shape[0])), num_warps=NUM_WARPS)


def final_layer(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None, eps: float, sigmoid: bool, out: torch.Tensor | None = None
                ) -> torch.Tensor:
    """The final layer's prediction ``[N, C]`` (in ``out`` when given) in x's dtype for the hidden rows
    ``x [N, D]``: affine-free LayerNorm (``eps``), ``·(1+scale)+shift``, the linear ``weight [C, D]``, ``bias [C]``
    (or None), then ``2·sigmoid − 1`` when ``sigmoid``."""
    kernel = "final_layer"
    _check_final(kernel, x, scale, shift, weight, bias, eps, sigmoid)
    rows, channels = x.shape[0], weight.shape[0]
    if out is None:
        out = torch.empty((rows, channels), dtype=x.dtype, device=x.device)
    else:
        check_tensor(kernel, "out", out, shape=(rows, channels), dtype=x.dtype, device=x.device)
    if rows:
        _final_layer_kernel[(triton.cdiv(rows, BLOCK_M),)](
            x, scale, shift, weight, weight if bias is None else bias, out, x.stride(0), scale.stride(0),
            shift.stride(0), rows, x.shape[1], channels, float(eps), enable_fp_fusion=False,
            **_meta(x, weight, bias, eps, sigmoid))
    return out


def final_layer_step(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor | None, eps: float, sigmoid: bool, sample: torch.Tensor,
                     noise: torch.Tensor, times: torch.Tensor, running: torch.Tensor, step: int,
                     cfg: float | torch.Tensor, guided: bool, out: torch.Tensor | None = None) -> torch.Tensor:
    """``final_layer`` of the hidden rows ``x [m·B·P, D]`` of ``cat([sample]*m)`` (m = 2 when guided,
    conditional rows first), then ``sampler_step`` from that prediction: returns the new sample ``[B, P, C]``
    float32 (in ``out`` when given; ``out`` may be ``sample`` for an in-place update). sample, noise ``[B, P, C]``
    float32; times ``[N + 1]``, running ``[N]`` float32 on the device; ``0 <= step < N``; cfg a Python float or a
    float32 device tensor ``[1]`` or ``[B]``."""
    kernel = "final_layer_step"
    _check_final(kernel, x, scale, shift, weight, bias, eps, sigmoid)
    check_tensor(kernel, "sample", sample, shape=(None, None, weight.shape[0]), dtype=torch.float32,
                 device=x.device)
    cfg = check_guidance(kernel, cfg, guided, sample)
    batch, patch, channels = sample.shape
    rows, mult = batch * patch, 2 if guided else 1
    if x.shape[0] != mult * rows:
        halves = "guided: conditional rows, then unconditional" if guided else "unguided"
        raise ValueError(f"{kernel}: x has {x.shape[0]} rows, expected {mult}·B·P = {mult * rows} for a sample of "
                         f"shape {list(sample.shape)} ({halves})")
    check_tensor(kernel, "noise", noise, shape=tuple(sample.shape), dtype=torch.float32, device=x.device)
    check_times(kernel, times, running, step, sample)
    out = step_output(kernel, sample, out)
    if rows:
        _final_layer_step_kernel[(triton.cdiv(rows, BLOCK_M),)](
            x, scale, shift, weight, weight if bias is None else bias, sample, noise, times, running, out, step, cfg,
            x.stride(0), scale.stride(0), shift.stride(0), rows, x.shape[1], channels, patch, float(eps),
            GUIDED=guided, CFG_PER_ROW=cfg_per_row(cfg), enable_fp_fusion=False,
            **_meta(x, weight, bias, eps, sigmoid))
    return out
