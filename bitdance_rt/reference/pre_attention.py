"""Functional references for what a backbone layer does around its attention call, one function per fused kernel.

* :func:`qk_norm_rope_append_reference` (text-to-image, Qwen3): per-head RMSNorm of q and k (the HF rule:
  normalise in float32, cast to the input dtype, times the weight), rotate-half RoPE, K and V appended to the cache.
* :func:`rope_append_interleaved_reference` (class-conditional): interleaved-pair RoPE in float32, no norm, same
  cache append.
* :func:`rmsnorm_residual_reference`: ``new_residual = x + residual`` (torch's promoted dtype: x's when both
  agree), then RMSNorm of it, in the HF style (Qwen3) or the ``torch.nn.RMSNorm`` style (class-conditional).
  The two styles differ only below float32: HF casts to the dtype before the weight, recent torch (verified on
  2.13; 2.4's composite still cast first) multiplies by the weight in float32 and casts once. The release runs
  its class-conditional norms in float32 (float32 weights under autocast), where both agree.

Shapes: q ``[B, T, Hq, D]``, k and v ``[B, T, Hkv, D]``; caches ``[B, Hkv, Lmax, D]``; ``lengths`` ``[B]`` (row b's
token t sits at position ``lengths[b] + t``); rotate-half tables ``[max_pos, D]``, interleaved tables
``[max_pos, D/2]``; the returned q is ``[B, Hq, T, D]``. Every function also runs in float64: the float32 steps
of the released math (normalisation, interleaved rotation) run in ``float64`` when the inputs are float64, so the
kernels can be checked against an exact oracle. For float32 and lower inputs the results are those of
:class:`~bitdance_rt.reference.qwen3.Qwen3Attention` and the class-conditional ``Attention`` bit for bit.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from bitdance_rt.errors import InvalidRequestError
from bitdance_rt.reference.qwen3 import rms_norm_hf
from bitdance_rt.reference.rope import apply_interleaved, apply_rotate_half

RMSNORM_STYLES = ("hf", "torch")


def rms_norm_torch(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim as ``torch.nn.RMSNorm`` (``F.rms_norm`` of the installed torch; torch 2.13
    applies the weight in float32 before the single cast to ``x.dtype``)."""
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def rmsnorm_residual_reference(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float,
                               style: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(RMSNorm(x + residual), x + residual)``; with ``residual=None`` the new residual is ``x`` itself."""
    if style not in RMSNORM_STYLES:
        raise InvalidRequestError(f"rmsnorm_residual: style must be one of {RMSNORM_STYLES}, found {style!r}")
    new_residual = x if residual is None else x + residual
    norm = rms_norm_hf if style == "hf" else rms_norm_torch
    return norm(new_residual, weight, eps), new_residual


def _check_positions(name: str, lengths: torch.Tensor, length: int, max_pos: int, max_len: int) -> list[int]:
    starts = [int(n) for n in lengths.tolist()]
    for row, start in enumerate(starts):
        if start < 0 or start + length > min(max_pos, max_len):
            raise InvalidRequestError(
                f"{name}: row {row} would write positions [{start}, {start + length}), outside the RoPE table "
                f"({max_pos} positions) or the cache ({max_len}); allocate longer tables/caches")
    return starts


def _append(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
            v_cache: torch.Tensor, lengths: torch.Tensor, max_pos: int,
            rotate: Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Row by row: ``rotate(q_row, k_row, start)`` gives q, k as ``[1, H, T, D]``; k and v go to the caches."""
    batch, length, q_heads, head_dim = q.shape
    starts = _check_positions(name, lengths, length, max_pos, k_cache.shape[2])
    q_out = torch.empty(batch, q_heads, length, head_dim, dtype=q.dtype, device=q.device)
    for row, start in enumerate(starts):
        q_row, k_row = rotate(q[row:row + 1], k[row:row + 1], start)
        q_out[row] = q_row[0]
        k_cache[row, :, start:start + length] = k_row[0]
        v_cache[row, :, start:start + length] = v[row].transpose(0, 1)
    return q_out


def qk_norm_rope_append_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_norm_weight: torch.Tensor,
                                  k_norm_weight: torch.Tensor, eps: float, cos_table: torch.Tensor,
                                  sin_table: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                  lengths: torch.Tensor) -> torch.Tensor:
    """Qwen3: per-head RMSNorm (HF rule), rotate-half RoPE at ``lengths[b] + t``; writes the caches, returns q
    ``[B, Hq, T, D]``."""
    length = q.shape[1]

    def rotate(q_row: torch.Tensor, k_row: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = cos_table[start:start + length], sin_table[start:start + length]
        q_row = rms_norm_hf(q_row, q_norm_weight, eps).transpose(1, 2)
        k_row = rms_norm_hf(k_row, k_norm_weight, eps).transpose(1, 2)
        return apply_rotate_half(q_row, cos, sin), apply_rotate_half(k_row, cos, sin)

    return _append("qk_norm_rope_append", q, k, v, k_cache, v_cache, lengths, cos_table.shape[0], rotate)


def rope_append_interleaved_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos_table: torch.Tensor,
                                      sin_table: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                      lengths: torch.Tensor) -> torch.Tensor:
    """Class-conditional: interleaved-pair RoPE at ``lengths[b] + t``, no norm; writes the caches, returns q
    ``[B, Hq, T, D]``."""
    length = q.shape[1]

    def rotate(q_row: torch.Tensor, k_row: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = cos_table[start:start + length], sin_table[start:start + length]
        return (apply_interleaved(q_row, cos, sin).transpose(1, 2),
                apply_interleaved(k_row, cos, sin).transpose(1, 2))

    return _append("rope_append_interleaved", q, k, v, k_cache, v_cache, lengths, cos_table.shape[0], rotate)
