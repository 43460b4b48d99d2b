"""The head's sampler step, fused (Triton): from the head's x-prediction to the new sample in one pass.

``sampler_step`` is one Euler–Maruyama step: velocity ``(pred − x) / max(1 − t, 0.05)``, guidance
``v_u + cfg·(v_c − v_u)`` over the conditional / unconditional halves of ``pred`` (one scale, or one per row when
rows sit at different AR steps of a guidance schedule), score, drift and the noisy update. ``sampler_final`` is
the last, noiseless Euler step at ``t = 1 − last_step_size`` followed by sign quantization: tokens for all
``m·B`` rows (both halves equal when guided), optionally the packed int32 words (``token_packing``'s bit order)
and the continuous sample.

Shapes: pred ``[m·B, P, C]`` (float32, bfloat16 or float16: the head's output for ``cat([x]*m)``, m = 2 when
guided), x and noise ``[B, P, C]`` float32, times ``[N + 1]`` and running ``[N]`` float32 device tensors (the
sampler's ``step_times`` and their ``running_times``, so one launch reads its t and dt on the device); cfg a
Python float or a float32 device tensor ``[1]`` or ``[B]`` (read on the device, so a captured graph serves every
AR step of a guidance schedule).
All arithmetic is float32 in the reference's op order with correctly rounded division and square root
(``div_rn``, ``sqrt_rn``) and no mul-add contraction (``enable_fp_fusion=False``): a step equals
``step_from_prediction`` computed with IEEE float32 ops bit for bit. Against torch on this machine's CPU it can
differ by one ulp of the noise scale, because this torch build's CPU ``sqrt`` is not correctly rounded (torch on
CUDA, where the release runs, is).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bitdance_rt.ops.argument_checks import check_tensor
from bitdance_rt.ops.sampler_contract import (FinalTokens, cfg_per_row, check_guidance, check_last_step_size,
                                              check_pred_and_x, check_times, final_outputs, step_output)
from bitdance_rt.kernels.token_packing import BITS_PER_WORD, pack_tile, sign_of
from bitdance_rt.reference.sampler import (LAST_STEP_SIZE, MIN_ONE_MINUS_T, final_step_from_prediction,
                                           step_from_prediction)

REFERENCE = step_from_prediction
REFERENCE_FINAL = final_step_from_prediction

MIN_DENOM = tl.constexpr(MIN_ONE_MINUS_T)  # the velocity's clamp_min of 1 − t
BLOCK = 1024         # elements per program of the step kernel
BLOCK_WORDS = 32     # 32 x 32 elements per program of the final kernel
NUM_WARPS = 4


@triton.jit
def guided_velocity_from(pred, pred_u, offs, mask, x, one_minus_t, cfg_ptr, row_size, GUIDED: tl.constexpr,
                         CFG_PER_ROW: tl.constexpr):
    """Velocity of the conditional predictions ``pred`` (float32 values at the sample elements ``offs``), guided
    with the unconditional ones ``pred_u`` (ignored unless GUIDED; the scale, ``cfg[0]`` or ``cfg[row]`` with
    ``row = offs // row_size``, is read on the device)."""
    denom = tl.maximum(one_minus_t, MIN_DENOM)
    v = tl.math.div_rn(pred - x, denom)
    if GUIDED:
        v_u = tl.math.div_rn(pred_u - x, denom)
        if CFG_PER_ROW:
            scale = tl.load(cfg_ptr + offs // row_size, mask=mask, other=0.0)
        else:
            scale = tl.load(cfg_ptr)
        v = v_u + scale * (v - v_u)
    return v


@triton.jit
def guided_velocity_of(pred_ptr, offs, mask, x, one_minus_t, n, cfg_ptr, row_size, GUIDED: tl.constexpr,
                       CFG_PER_ROW: tl.constexpr):
    """Velocity of the conditional rows ``pred[offs]`` (guided with the unconditional rows ``pred[n + offs]``; the
    scale, ``cfg[0]`` or ``cfg[row]`` with ``row = offs // row_size``, is read on the device)."""
    pred = tl.load(pred_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    pred_u = pred
    if GUIDED:
        pred_u = tl.load(pred_ptr + n + offs, mask=mask, other=0.0).to(tl.float32)
    return guided_velocity_from(pred, pred_u, offs, mask, x, one_minus_t, cfg_ptr, row_size, GUIDED, CFG_PER_ROW)


@triton.jit
def euler_maruyama_of(x, v, t, dt, noise):
    """One SDE step of the sample x with velocity v at time t (float32, the reference's op order)."""
    sigma = 1.0 - t
    var = sigma * sigma - (t * -1.0) * sigma
    score = tl.math.div_rn(t * v - x, var)
    drift = v + sigma * score
    noise_scale = tl.sqrt_rn(2.0 * sigma * dt)
    return x + drift * dt + noise_scale * noise


@triton.jit(do_not_specialize=["step"])
def _sampler_step_kernel(pred_ptr, x_ptr, noise_ptr, times_ptr, running_ptr, out_ptr, step, cfg_ptr, n, row_size,
                         GUIDED: tl.constexpr, CFG_PER_ROW: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    t = tl.load(running_ptr + step)
    dt = tl.load(times_ptr + step + 1) - tl.load(times_ptr + step)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    noise = tl.load(noise_ptr + offs, mask=mask, other=0.0)
    v = guided_velocity_of(pred_ptr, offs, mask, x, 1.0 - t, n, cfg_ptr, row_size, GUIDED, CFG_PER_ROW)
    tl.store(out_ptr + offs, euler_maruyama_of(x, v, t, dt, noise), mask=mask)


@triton.jit
def _sampler_final_kernel(pred_ptr, x_ptr, tokens_ptr, words_ptr, sample_ptr, t_last, step_size, cfg_ptr, n,
                          row_size, GUIDED: tl.constexpr, CFG_PER_ROW: tl.constexpr, PACK: tl.constexpr,
                          KEEP_SAMPLE: tl.constexpr, BLOCK_WORDS: tl.constexpr):
    word = tl.program_id(0).to(tl.int64) * BLOCK_WORDS + tl.arange(0, BLOCK_WORDS)
    bit = tl.arange(0, 32)
    offs = word[:, None] * 32 + bit[None, :]
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    # cast first: in the interpreter a float argument is a Python float, and 1.0 - t_last would round in float64
    one_minus_t = 1.0 - tl.cast(t_last, tl.float32)
    v = guided_velocity_of(pred_ptr, offs, mask, x, one_minus_t, n, cfg_ptr, row_size, GUIDED, CFG_PER_ROW)
    sample = x + v * step_size
    tokens = sign_of(sample).to(tokens_ptr.dtype.element_ty)
    tl.store(tokens_ptr + offs, tokens, mask=mask)
    if GUIDED:
        tl.store(tokens_ptr + n + offs, tokens, mask=mask)
    if KEEP_SAMPLE:
        tl.store(sample_ptr + offs, sample, mask=mask)
    if PACK:
        num_words = n // 32
        words = pack_tile(sample, bit)
        word_mask = word < num_words
        tl.store(words_ptr + word, words, mask=word_mask)
        if GUIDED:
            tl.store(words_ptr + num_words + word, words, mask=word_mask)


def sampler_step(pred: torch.Tensor, x: torch.Tensor, noise: torch.Tensor, times: torch.Tensor,
                 running: torch.Tensor, step: int, cfg: float | torch.Tensor, guided: bool,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """One Euler–Maruyama step; returns the new x ``[B, P, C]`` float32 (in ``out`` when given; ``out`` may be
    ``x`` for an in-place update).

    pred: the head's x-prediction ``[m·B, P, C]`` for ``cat([x]*m)`` (conditional rows first when guided).
    times: ``step_times(N, ...)`` ``[N + 1]`` float32; running: ``running_times(times)`` ``[N]`` float32; the step
    uses ``t = running[step]`` and ``dt = times[step + 1] − times[step]``, both read on the device.
    cfg: a Python float, or a float32 device tensor of one scale or ``[B]`` (one per row).
    """
    kernel = "sampler_step"
    check_pred_and_x(kernel, pred, x, guided)
    cfg = check_guidance(kernel, cfg, guided, x)
    check_tensor(kernel, "noise", noise, shape=tuple(x.shape), dtype=torch.float32, device=x.device)
    check_times(kernel, times, running, step, x)
    out = step_output(kernel, x, out)
    n = x.numel()
    if n:
        _sampler_step_kernel[(triton.cdiv(n, BLOCK),)](
            pred, x, noise, times, running, out, step, cfg, n, x.shape[1] * x.shape[2], GUIDED=guided,
            CFG_PER_ROW=cfg_per_row(cfg), BLOCK=BLOCK, num_warps=NUM_WARPS, enable_fp_fusion=False)
    return out


def sampler_final(pred: torch.Tensor, x: torch.Tensor, cfg: float | torch.Tensor, guided: bool,
                  last_step_size: float = LAST_STEP_SIZE, tokens_out: torch.Tensor | None = None,
                  packed_out: torch.Tensor | None = None, *, tokens_dtype: torch.dtype | None = None,
                  pack: bool = False, sample_out: torch.Tensor | None = None,
                  keep_sample: bool = False) -> FinalTokens:
    """The last Euler step ``x + v·last_step_size`` (v at ``t = 1 − last_step_size``), then ``sign``.

    pred ``[m·B, P, C]``, x ``[B, P, C]`` float32 and cfg as in ``sampler_step``. Writes tokens ``[m·B, P, C]``
    (±1, and 0 for an exact 0.0 sample) in ``tokens_dtype`` (default: pred's dtype; float32, bfloat16 or float16);
    with ``pack`` (or a ``packed_out``) the int32 words ``[m·B, P, C / 32]`` (C a multiple of 32; a 0 token packs
    as −1); with ``keep_sample`` (or a ``sample_out``) the float32 sample ``[B, P, C]``.
    """
    kernel = "sampler_final"
    check_pred_and_x(kernel, pred, x, guided)
    cfg = check_guidance(kernel, cfg, guided, x)
    check_last_step_size(kernel, last_step_size)
    result = final_outputs(kernel, pred, x, tokens_out, packed_out, tokens_dtype, pack, sample_out, keep_sample)
    n = x.numel()
    if n:
        pack, keep_sample = result.packed is not None, result.sample is not None
        _sampler_final_kernel[(triton.cdiv(n, BLOCK_WORDS * BITS_PER_WORD),)](
            pred, x, result.tokens, result.packed if pack else result.tokens,
            result.sample if keep_sample else result.tokens, 1.0 - last_step_size, float(last_step_size), cfg, n,
            x.shape[1] * x.shape[2], GUIDED=guided, CFG_PER_ROW=cfg_per_row(cfg), PACK=pack,
            KEEP_SAMPLE=keep_sample, BLOCK_WORDS=BLOCK_WORDS, num_warps=NUM_WARPS, enable_fp_fusion=False)
    return result
