"""The head's final layer, alone or fused with the sampler step that consumes it (Triton).

``final_layer``: ``pred = map((LN(x)·(1+scale)+shift)·Wᵀ + b)`` with an affine-free LayerNorm over D and ``map``
``2·sigmoid − 1`` for sigmoid-output models (else the identity). ``final_layer_step``: the same for the conditional
and the unconditional rows of each patch element, then ``sampler_step``'s guided Euler–Maruyama step from that
prediction, writing the new sample; the prediction never leaves registers.

Shapes: x ``[N, D]`` (the last block's output, N = m·B·P, conditional rows first when guided, m = 2), scale and
shift ``[N, D]`` (row-strided views allowed: the final chunks of the head's adaLN output), weight ``[C, D]``, bias
``[C]`` or None; pred ``[N, C]``; sample and noise ``[B, P, C]`` float32; times, running, step and cfg as in
``kernels/sampler_step.py``. x, scale, shift, weight and bias share one dtype (float32, bfloat16 or float16).

Each program takes ``BLOCK_M`` rows (of the sample: each with its conditional and, guided, unconditional hidden
row). D is reduced in chunks of ``BLOCK_D`` columns, so any width fits (the 14B head's 5120 included), in two
passes: the statistics (each chunk's mean and centred sum of squares merged into the running ones), then one that
normalises, modulates, rounds to the weight's dtype (the unfused chain stores that tensor) and accumulates
``tl.dot`` into ``[BLOCK_M, C]`` float32, each weight chunk read once for both guidance halves. The linear's output
and the sigmoid map are rounded to the weight's dtype like the unfused ops' stores, then the step runs in float32
with ``sampler_step``'s own helpers (``div_rn``, ``sqrt_rn``, no mul-add contraction): given the same prediction,
the step is bit for bit ``sampler_step``'s. Both kernels compute the prediction with the same code and no
contraction, so ``final_layer_step`` equals ``final_layer`` followed by ``sampler_step`` bit for bit where the rows
sit at the same places of their tiles (checked through the interpreter; tests/kernels/test_final_layer.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bitdance_rt.ops.argument_checks import check_rows, check_tensor
from bitdance_rt.ops.sampler_contract import cfg_per_row, check_guidance, check_times, step_output
from bitdance_rt.kernels.sampler_step import euler_maruyama_of, guided_velocity_from
from bitdance_rt.kernels import _tiles
from bitdance_rt.reference.head_ops import final_layer_ref, final_layer_step_ref

REFERENCE = final_layer_ref
REFERENCE_STEP = final_layer_step_ref
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BLOCK_M = 16        # rows per program (tl.dot's smallest M)
BLOCK_D = 128       # columns of x per reduction chunk (16-bit weights)
BLOCK_D_FP32 = 32   # float32 weights (IEEE dot, 2 accumulators): the guided step spilled on sm_90 with 128 and 64
INTERPRETER_BLOCK_M, INTERPRETER_BLOCK_D = 128, 1024  # under Triton's interpreter (kernels/_tiles.py)
MIN_DOT = 16        # tl.dot's smallest tile side
MAX_CHANNELS = 256  # output channels held in one tile (the released models have 16 or 32)
NUM_WARPS = 4


@triton.jit
def _row_statistics(x_ptr, row, row_in, x_stride, width, eps, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Mean and ``1/sqrt(var + eps)`` (``[BLOCK_M, 1]`` float32) of the hidden rows ``row`` in one pass over D: each
    chunk's mean and centred sum of squares, merged into the running ones (Chan, Golub and LeVeque's update, as
    stable as the two-pass form)."""
    r, r_in = row[:, None], row_in[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    mean = tl.zeros([BLOCK_M], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_M], dtype=tl.float32)
    seen = tl.zeros([1], dtype=tl.float32)
    for d0 in range(0, width, BLOCK_D):
        cols = d0 + d
        inside = r_in & (cols < width)
        x = tl.load(x_ptr + r * x_stride + cols, mask=inside, other=0.0).to(tl.float32)
        count = tl.sum((cols < width).to(tl.float32), axis=1)  # [1]: columns of this chunk
        chunk_mean = tl.sum(x, axis=1) / count
        centred = tl.where(inside, x - chunk_mean[:, None], 0.0)
        total = seen + count
        delta = chunk_mean - mean
        mean = mean + delta * (count / total)
        m2 = m2 + tl.sum(centred * centred, axis=1) + delta * delta * (seen * count / total)
        seen = total
    return mean[:, None], tl.rsqrt((m2 / width)[:, None] + eps)


@triton.jit
def _modulated_chunk(x_ptr, scale_ptr, shift_ptr, row, row_in, x_stride, scale_stride, shift_stride, mean, rstd, d0,
                     width, dtype: tl.constexpr, BLOCK_D: tl.constexpr):
    """``LN(x)·(1+scale)+shift`` of the rows ``row`` on columns ``d0 .. d0 + BLOCK_D``, rounded to ``dtype`` (the
    weight's; 0 outside the rows and columns)."""
    r, r_in = row[:, None], row_in[:, None]
    cols = d0 + tl.arange(0, BLOCK_D)[None, :]
    inside = r_in & (cols < width)
    x = tl.load(x_ptr + r * x_stride + cols, mask=inside, other=0.0).to(tl.float32)
    scale = tl.load(scale_ptr + r * scale_stride + cols, mask=inside, other=0.0).to(tl.float32)
    shift = tl.load(shift_ptr + r * shift_stride + cols, mask=inside, other=0.0).to(tl.float32)
    return tl.where(inside, (x - mean) * rstd * (1.0 + scale) + shift, 0.0).to(dtype)


@triton.jit
def _weight_chunk(w_ptr, d0, width, c, c_in, BLOCK_D: tl.constexpr):
    """``weightᵀ`` on rows ``d0 .. d0 + BLOCK_D``: ``[BLOCK_D, BLOCK_C]`` (0 outside)."""
    k = d0 + tl.arange(0, BLOCK_D)[:, None]
    return tl.load(w_ptr + c[None, :] * width + k, mask=(k < width) & c_in[None, :], other=0.0)


@triton.jit
def _accumulate(h, w, acc, IEEE: tl.constexpr):
    if IEEE:  # float32 operands: exact products, not TF32
        acc = tl.dot(h, w, acc, input_precision="ieee")
    else:
        acc = tl.dot(h, w, acc)
    return acc


@triton.jit
def _output_map(acc, b_ptr, c, c_in, HAS_BIAS: tl.constexpr, SIGMOID: tl.constexpr, dtype: tl.constexpr):
    """The linear's bias, the rounding of its output to ``dtype``, and ``2·sigmoid − 1`` (rounded again) when
    SIGMOID: the prediction as float32 values of ``dtype``."""
    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=c_in, other=0.0).to(tl.float32)[None, :]
    pred = acc.to(dtype).to(tl.float32)
    if SIGMOID:
        pred = (2.0 / (1.0 + tl.exp(-pred)) - 1.0).to(dtype).to(tl.float32)
    return pred


@triton.jit
def _final_layer_kernel(x_ptr, scale_ptr, shift_ptr, w_ptr, b_ptr, out_ptr, x_stride, scale_stride, shift_stride,
                        rows, width, channels, eps, HAS_BIAS: tl.constexpr, SIGMOID: tl.constexpr,
                        IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr):
    dtype: tl.constexpr = w_ptr.dtype.element_ty
    row = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_in = row < rows
    c = tl.arange(0, BLOCK_C)
    c_in = c < channels
    mean, rstd = _row_statistics(x_ptr, row, row_in, x_stride, width, eps, BLOCK_M, BLOCK_D)
    acc = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    for d0 in range(0, width, BLOCK_D):
        w = _weight_chunk(w_ptr, d0, width, c, c_in, BLOCK_D)
        h = _modulated_chunk(x_ptr, scale_ptr, shift_ptr, row, row_in, x_stride, scale_stride, shift_stride, mean,
                             rstd, d0, width, dtype, BLOCK_D)
        acc = _accumulate(h, w, acc, IEEE)
    pred = _output_map(acc, b_ptr, c, c_in, HAS_BIAS, SIGMOID, dtype)
    tl.store(out_ptr + row[:, None] * channels + c[None, :], pred.to(out_ptr.dtype.element_ty),
             mask=row_in[:, None] & c_in[None, :])


@triton.jit(do_not_specialize=["step"])
def _final_layer_step_kernel(x_ptr, scale_ptr, shift_ptr, w_ptr, b_ptr, sample_ptr, noise_ptr, times_ptr,
                             running_ptr, out_ptr, step, cfg_ptr, x_stride, scale_stride, shift_stride, rows, width,
                             channels, patch, eps, HAS_BIAS: tl.constexpr, SIGMOID: tl.constexpr,
                             IEEE: tl.constexpr, GUIDED: tl.constexpr, CFG_PER_ROW: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr):
    dtype: tl.constexpr = w_ptr.dtype.element_ty
    row = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)  # rows of the sample [B·P, C]
    row_u = row + rows  # guided: the unconditional hidden row of the same patch element, B·P rows further
    row_in = row < rows
    c = tl.arange(0, BLOCK_C)
    c_in = c < channels
    mean, rstd = _row_statistics(x_ptr, row, row_in, x_stride, width, eps, BLOCK_M, BLOCK_D)
    mean_u, rstd_u = mean, rstd
    if GUIDED:
        mean_u, rstd_u = _row_statistics(x_ptr, row_u, row_in, x_stride, width, eps, BLOCK_M, BLOCK_D)
    acc = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    for d0 in range(0, width, BLOCK_D):
        w = _weight_chunk(w_ptr, d0, width, c, c_in, BLOCK_D)  # read once for both halves
        h = _modulated_chunk(x_ptr, scale_ptr, shift_ptr, row, row_in, x_stride, scale_stride, shift_stride, mean,
                             rstd, d0, width, dtype, BLOCK_D)
        acc = _accumulate(h, w, acc, IEEE)
        if GUIDED:
            h_u = _modulated_chunk(x_ptr, scale_ptr, shift_ptr, row_u, row_in, x_stride, scale_stride,
                                   shift_stride, mean_u, rstd_u, d0, width, dtype, BLOCK_D)
            acc_u = _accumulate(h_u, w, acc_u, IEEE)
    pred = _output_map(acc, b_ptr, c, c_in, HAS_BIAS, SIGMOID, dtype)
    pred_u = pred
    if GUIDED:
        pred_u = _output_map(acc_u, b_ptr, c, c_in, HAS_BIAS, SIGMOID, dtype)
    offs = row[:, None] * channels + c[None, :]
    mask = row_in[:, None] & c_in[None, :]
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


def _meta(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, sigmoid: bool) -> dict:
    block_m, block_d = BLOCK_M, BLOCK_D_FP32 if weight.dtype == torch.float32 else BLOCK_D
    if _tiles.interpreter_tiles():  # Triton's interpreter: fewer programs and chunks (each costs milliseconds)
        block_m, block_d = INTERPRETER_BLOCK_M, INTERPRETER_BLOCK_D
    return dict(HAS_BIAS=bias is not None, SIGMOID=sigmoid, IEEE=weight.dtype == torch.float32, BLOCK_M=block_m,
                BLOCK_D=min(block_d, max(MIN_DOT, triton.next_power_of_2(x.shape[1]))),
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
            **_meta(x, weight, bias, sigmoid))
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
            **_meta(x, weight, bias, sigmoid))
    return out
