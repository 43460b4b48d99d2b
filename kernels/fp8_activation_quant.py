"""Activations to e4m3 on the fly: ``x[M, K]`` -> codes ``[M, K]`` (float8_e4m3fn) and float32 scales, one per token
(``group_size=None``: ``scales [M]``) or one per 1×128 group (``group_size=128``: ``scales [M, ceil(K/128)]``), the
operand of ``fp8_gemm``.

Rounding, bit for bit that of ``fp8_activation_quant_reference`` (the reference's ``tensor.to(float8_e4m3fn)``):
``amax`` = largest ``|x|`` of the token or group in float32; ``scale = max(amax / 448, SCALE_FLOOR)`` and the
quotient ``x / scale`` with IEEE division (``div_rn``); clamped to ±448; rounded to nearest e4m3, ties to even, by
integer arithmetic on the float32 bits (``e4m3_bits``: normal codes by rounding the mantissa to 3 bits, subnormal
codes (|q| < 2^-6) by adding 2^14, whose float32 spacing is the subnormal step 2^-9). The codes are written as bytes
through a uint8 view, so the same arithmetic runs on every GPU and in Triton's interpreter (whose own float32 ->
e4m3 conversion was seen to round 1.0625 to 1.125 and -31.4 to -16).

Non-finite inputs: a token or group holding a NaN gets a NaN scale (as the reference's ``amax`` propagates it, and
whatever ``max`` does with NaN on the platform) and NaN codes (0x7F, or 0xFF where the NaN's sign survives), so its
outputs in ``fp8_gemm`` are NaN even where the e4m3 NaN code is not decoded as NaN (the interpreter reads 0x7F as
480). An Inf gives an Inf scale and non-finite outputs. Never a silently finite result.

Shapes: ``x [M, K]`` float32, bfloat16 or float16, rows may be strided, channels contiguous. A program handles
``BLOCK_M`` rows (``_block_m``) and one token (two passes over K: amax, then codes) or one 128-column group.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bitdance_rt.ops.argument_checks import check_rows, check_tensor
from bitdance_rt.kernels import _tiles
from bitdance_rt.quantization.formats import BLOCK, FP8_DTYPE, FP8_MAX, SCALE_FLOOR
from bitdance_rt.quantization.reference_linear import fp8_activation_quant_reference

REFERENCE = fp8_activation_quant_reference
KERNEL = "fp8_activation_quant"
X_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
TOKEN_BLOCK_K = 1024  # columns per pass step of the per-token form


ONE_ROW_UP_TO = 512  # per token: one row per program up to this many rows (more programs streaming), then 4
INTERPRETER_BLOCK_M = 64  # under Triton's interpreter each program costs milliseconds: fewer, taller tiles (_tiles)


def _block_m(m: int, grouped: bool) -> int:
    """Rows per program: 16 for 128-column groups; per token 1 or 4 (above ``ONE_ROW_UP_TO`` rows); 64 under the
    interpreter. Each row's arithmetic is the same whatever the tile (its own amax, then its own codes)."""
    if _tiles.interpreter_tiles():
        return INTERPRETER_BLOCK_M
    return 16 if grouped else (1 if m <= ONE_ROW_UP_TO else 4)


@triton.jit
def e4m3_bits(q):
    """float32 ``q`` (|q| <= 448 or NaN) -> its e4m3fn byte (int32 0..255), round to nearest, ties to even."""
    bits = q.to(tl.int32, bitcast=True)
    sign = (bits >> 24) & 0x80
    magnitude = bits & 0x7FFFFFFF
    # normal: round the 23-bit mantissa to 3 bits (ties to even), then rebias the exponent from 127 to 7
    rounded = magnitude + 0x7FFFF + ((magnitude >> 20) & 1)
    normal = (rounded >> 20) - (120 << 3)
    # subnormal (|q| < 2^-6): |q| + 2^14 rounds |q| to a multiple of 2^-9; the low mantissa bits are the code 0..8
    shifted = magnitude.to(tl.float32, bitcast=True) + 16384.0
    subnormal = shifted.to(tl.int32, bitcast=True) - 0x46800000
    code = tl.where(magnitude >= (121 << 23), normal, subnormal)
    return tl.where(q != q, sign | 0x7F, sign | code)


@triton.jit
def _fp8_activation_quant_kernel(x_ptr, codes_ptr, scales_ptr, M, K, x_row_stride, codes_row_stride, num_groups,
                                 SCALE_FLOOR: tl.constexpr, FP8_MAX: tl.constexpr, GROUPED: tl.constexpr,
                                 BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    rows64 = rows.to(tl.int64)[:, None]
    if GROUPED:
        start = tl.program_id(1) * BLOCK_K
        stop = tl.minimum(start + BLOCK_K, K)
    else:
        start = 0
        stop = K
    cols = tl.arange(0, BLOCK_K)
    amax = tl.zeros((BLOCK_M,), dtype=tl.float32)
    nan_seen = tl.zeros((BLOCK_M,), dtype=tl.int32)
    for k0 in range(start, stop, BLOCK_K):
        k = k0 + cols
        inside = row_ok[:, None] & (k < stop)[None, :]
        x = tl.load(x_ptr + rows64 * x_row_stride + k[None, :], mask=inside, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.max(tl.abs(x), axis=1))
        nan_seen = tl.maximum(nan_seen, tl.max((x != x).to(tl.int32), axis=1))
    # a NaN makes the scale NaN (as torch's amax does), whatever max does with NaN on this platform
    scale = tl.where(nan_seen > 0, float("nan"), tl.maximum(tl.math.div_rn(amax, FP8_MAX), SCALE_FLOOR))
    if GROUPED:
        tl.store(scales_ptr + rows * num_groups + tl.program_id(1), scale, mask=row_ok)
    else:
        tl.store(scales_ptr + rows, scale, mask=row_ok)
    for k0 in range(start, stop, BLOCK_K):
        k = k0 + cols
        inside = row_ok[:, None] & (k < stop)[None, :]
        x = tl.load(x_ptr + rows64 * x_row_stride + k[None, :], mask=inside, other=0.0).to(tl.float32)
        q = tl.math.div_rn(x, scale[:, None])
        q = tl.where(q != q, q, tl.minimum(tl.maximum(q, -FP8_MAX), FP8_MAX))
        tl.store(codes_ptr + rows64 * codes_row_stride + k[None, :], e4m3_bits(q).to(tl.uint8), mask=inside)


def fp8_activation_quant(x: torch.Tensor, group_size: int | None = None, codes: torch.Tensor | None = None,
                         scales: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [M, K]`` -> ``(codes [M, K] float8_e4m3fn, scales float32 [M] or [M, ceil(K/128)])``; ``codes`` and
    ``scales`` may be given (codes' rows may be strided)."""
    if group_size not in (None, BLOCK):
        raise ValueError(f"{KERNEL}: group_size must be None (one scale per token) or {BLOCK}, found {group_size!r}")
    check_tensor(KERNEL, "x", x, shape=(None, None), dtype=X_DTYPES, contiguous=False)
    m, k = x.shape
    device = x.device
    check_rows(KERNEL, "x", x, (m, k), x.dtype, device)
    groups = triton.cdiv(k, BLOCK)
    scale_shape = (m,) if group_size is None else (m, groups)
    if codes is None:
        codes = torch.empty((m, k), dtype=FP8_DTYPE, device=device)
    else:
        check_rows(KERNEL, "codes", codes, (m, k), FP8_DTYPE, device)
    if scales is None:
        scales = torch.empty(scale_shape, dtype=torch.float32, device=device)
    else:
        check_tensor(KERNEL, "scales", scales, shape=scale_shape, dtype=torch.float32, device=device)
    if m == 0 or k == 0:
        return codes, scales.fill_(SCALE_FLOOR)
    grouped = group_size is not None
    block_m = _block_m(m, grouped)
    grid = (triton.cdiv(m, block_m), groups if grouped else 1)
    _fp8_activation_quant_kernel[grid](
        x, codes.view(torch.uint8), scales, m, k, x.stride(0), codes.stride(0), groups, SCALE_FLOOR=SCALE_FLOOR,
        FP8_MAX=FP8_MAX, GROUPED=grouped, BLOCK_M=block_m, BLOCK_K=BLOCK if grouped else TOKEN_BLOCK_K, num_warps=4)
    return codes, scales
