"""The PyTorch provider: the reference functions (``bitdance_rt/reference``) behind the Triton launchers'
signatures, so the engine runs on any device without Triton (slowly; attention builds dense masks, and lengths are
read on the host, so these cannot be captured in a CUDA graph). Outputs go into ``out`` arguments when given.
"""

from __future__ import annotations

import torch

from .sampler_contract import FinalTokens  # plain torch: no Triton import
from ..reference.decoder_ops import group_norm_silu_ref, token_styled_group_norm_ref
from ..reference.attention import decode_allowed, masked_attention, prefill_allowed
from ..reference.head_ops import (final_layer_ref, final_layer_step_ref, gated_residual_ref, input_projection_ref,
                                  layernorm_modulate_ref, patch_attention_ref, sigmoid_output_ref, swiglu_ref,
                                  time_condition_ref)
from ..reference.philox_noise import keyed_normal
from ..reference.pre_attention import (qk_norm_rope_append_reference, rmsnorm_residual_reference,
                                       rope_append_interleaved_reference)
from ..reference.sampler import LAST_STEP_SIZE, final_step_from_prediction, step_from_prediction
from ..reference.token_packing import bit_linear_ref, pack_signs_ref, unpack_signs_ref
from ..quantization.reference_linear import quantized_linear_reference


# the functions here that read device tensors on the host (lengths, to build dense masks and slice caches): a CUDA
# graph cannot hold them; the rest are plain device ops
READS_ON_HOST = frozenset({"block_attention_decode", "block_attention_prefill", "qk_norm_rope_append",
                           "rope_append_interleaved"})


def _cfg(cfg):
    """A Python float, or a device tensor of one scale [1] or one per row [B] (broadcast over P and C)."""
    if isinstance(cfg, (int, float)):
        return float(cfg)
    return cfg.view(-1, 1, 1)  # stays on the device: nothing is read on the host


def _into(out: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
    return value if out is None else out.copy_(value)


def block_attention_decode(q, k_cache, v_cache, lengths, scale, out=None, *, key_splits=None):
    allowed = decode_allowed(lengths, q.shape[2], k_cache.shape[2])
    return _into(out, masked_attention(q, k_cache, v_cache, allowed, scale).to(q.dtype))


def block_attention_prefill(q, k_cache, v_cache, lengths, causal_lens, block, scale, out=None):
    total = q.shape[2]
    allowed = prefill_allowed(lengths.clamp_max(total), causal_lens, block, total)
    result = masked_attention(q, k_cache[:, :, :total], v_cache[:, :, :total], allowed, scale)
    return _into(out, result.to(q.dtype))


def qk_norm_rope_append(q, k, v, q_norm_weight, k_norm_weight, eps, cos_table, sin_table, k_cache, v_cache,
                        lengths, q_out=None):
    return _into(q_out, qk_norm_rope_append_reference(q, k, v, q_norm_weight, k_norm_weight, eps, cos_table,
                                                      sin_table, k_cache, v_cache, lengths))


def rope_append_interleaved(q, k, v, cos_table, sin_table, k_cache, v_cache, lengths, q_out=None):
    return _into(q_out, rope_append_interleaved_reference(q, k, v, cos_table, sin_table, k_cache, v_cache,
                                                          lengths))


def rmsnorm_residual(x, residual, weight, eps, *, style, out=None, residual_out=None):
    y, new_residual = rmsnorm_residual_reference(x, residual, weight, eps, style)
    if residual_out is not None:
        new_residual = residual_out.copy_(new_residual)
    return _into(out, y), new_residual


def layernorm_modulate(x, scale, shift, weight, bias, eps, out=None):
    return _into(out, layernorm_modulate_ref(x, scale, shift, weight, bias, eps).to(x.dtype))


def gated_residual(x, h, gate, out=None):
    return _into(out, gated_residual_ref(x, h, gate).to(x.dtype))


def time_condition(cond, time, out=None):
    return _into(out, time_condition_ref(cond, time))


def sigmoid_output(x, out=None):
    return _into(out, sigmoid_output_ref(x))


def input_projection(x_half, weight, bias, mult, out=None):
    return _into(out, input_projection_ref(x_half, weight, bias, mult))


def final_layer(x, scale, shift, weight, bias, eps, sigmoid, out=None):
    return _into(out, final_layer_ref(x, scale, shift, weight, bias, eps, sigmoid))


def final_layer_step(x, scale, shift, weight, bias, eps, sigmoid, sample, noise, times, running, step, cfg, guided,
                     out=None):
    t, dt = running[step], times[step + 1] - times[step]
    return _into(out, final_layer_step_ref(x, scale, shift, weight, bias, eps, sigmoid, sample, noise, t, dt,
                                           _cfg(cfg), guided))


def group_norm_silu(x, weight, bias, groups, eps, out=None):
    return _into(out, group_norm_silu_ref(x, weight, bias, groups, eps))


def token_styled_group_norm(x, scale, shift, groups, eps, out=None):
    return _into(out, token_styled_group_norm_ref(x, scale, shift, groups, eps))


def swiglu(ab, out=None):
    return _into(out, swiglu_ref(ab))


def patch_attention(qkv, head_dim, out=None):
    return _into(out, patch_attention_ref(qkv, head_dim))


def sampler_step(pred, x, noise, times, running, step, cfg, guided, out=None):
    cfg_value = _cfg(cfg)
    t, dt = running[step], times[step + 1] - times[step]
    return _into(out, step_from_prediction(pred.float(), x, t, dt, noise, cfg_value, guided))


def sampler_final(pred, x, cfg, guided, last_step_size=None, tokens_out=None, packed_out=None, *,
                  tokens_dtype=None, pack=False, sample_out=None, keep_sample=False):
    size = LAST_STEP_SIZE if last_step_size is None else last_step_size
    cfg_value = _cfg(cfg)
    sample = final_step_from_prediction(pred.float(), x, cfg_value, guided, size)
    rows = pred.shape[0] // x.shape[0]
    tokens = torch.sign(torch.cat([sample] * rows, dim=0)).to(tokens_dtype or pred.dtype)
    tokens = _into(tokens_out, tokens)
    words = None
    if pack or packed_out is not None:
        words = _into(packed_out, pack_signs_ref(tokens))
    kept = _into(sample_out, sample) if (keep_sample or sample_out is not None) else None
    return FinalTokens(tokens, words, kept)


def sign_quantize(x, out=None):
    return _into(out, torch.sign(x).nan_to_num(0.0))


def pack_signs(tokens, out=None):
    return _into(out, pack_signs_ref(tokens))


def unpack_signs(words, dtype, out=None):
    return _into(out, unpack_signs_ref(words, dtype))


def keyed_noise(seeds, ar_steps, rows_in_request, sample_index, patch, channels, out=None):
    return _into(out, keyed_normal(seeds, ar_steps, rows_in_request, sample_index, patch, channels))


def sampler_step_keyed(pred, x, times, running, step, cfg, guided, seeds, ar_steps, rows_in_request, out=None):
    noise = keyed_normal(seeds, ar_steps, rows_in_request, step + 1, x.shape[1], x.shape[2])
    return sampler_step(pred, x, noise, times, running, step, cfg, guided, out=out)


def bit_linear(words, weight, bias=None, out=None):
    return _into(out, bit_linear_ref(words, weight, bias))


def quantized_linear(x: torch.Tensor, qw, bias: torch.Tensor | None = None, *, act_quant: str | None = "token"
                     ) -> torch.Tensor:
    """The quantized layer in plain PyTorch (``quantization.reference_linear``), with the fast path's signature:
    int8 weights are weight-only whatever ``act_quant`` says; fp8 weights quantize the activations per token
    (``"token"``) or per 1x128 group (``"group"``)."""
    return quantized_linear_reference(x, qw, bias, None if qw.fmt == "int8" else act_quant)


def _linear_ref(x, w, b, act_quant):
    if isinstance(w, torch.Tensor):
        return torch.nn.functional.linear(x, w, b)
    return quantized_linear(x, w, b, act_quant=act_quant)


def float_linear(x, w, b=None, *, split_k=None):
    return torch.nn.functional.linear(x, w, b)


def linear_swiglu(x, w, b=None, *, act_quant="token", split_k=None):
    """``swiglu_ref`` of the layer (float or 8-bit weight ``[2H, K]``: gate rows, then up rows)."""
    return swiglu_ref(_linear_ref(x, w, b, act_quant))


def linear_gated_residual(x, h, w, b, gate, *, act_quant="token", split_k=None):
    """``x += gate·layer(h)`` in place (``gated_residual_ref``), returns x."""
    return x.copy_(gated_residual_ref(x, _linear_ref(h, w, b, act_quant), gate).to(x.dtype))
