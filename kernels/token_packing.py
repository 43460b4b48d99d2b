"""Sign quantization and bit packing of binary tokens (Triton).

- ``sign_quantize(x)``: ``torch.sign`` elementwise, any shape, float32 / bfloat16 / float16 in and out:
  +1 for x > 0, −1 for x < 0, 0 for ±0.0; NaN gives 0, as ``torch.sign`` does on this build's CPU.
- ``pack_signs(tokens [..., C])`` -> int32 ``[..., C / 32]``: bit ``c`` of word ``w`` is set iff
  ``tokens[..., 32·w + c] > 0`` (bit 31 is the int32 sign bit). C must be a multiple of 32. A 0 token (and a NaN)
  packs as a clear bit, i.e. as −1: only ±1 tokens round-trip.
- ``unpack_signs(words [..., W], dtype)`` -> ``[..., 32·W]`` of ±1 in ``dtype``: the projector's input.

Every kernel walks the flat, contiguous tensor in tiles of ``BLOCK_WORDS × 32`` elements (one row of the tile is
one word's 32 channels), so it is memory-bound: read 2–4 bytes and write 1/8–1 of that per channel. No float
arithmetic happens here, only comparisons, selects and integer shifts/sums: results are exact on any device.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bitdance_rt.ops.argument_checks import check_tensor
from bitdance_rt.reference.token_packing import BITS_PER_WORD, pack_signs_ref, unpack_signs_ref

REFERENCE_SIGN = torch.sign
REFERENCE_PACK = pack_signs_ref
REFERENCE_UNPACK = unpack_signs_ref

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BLOCK_WORDS = 128  # 128 x 32 = 4096 elements per program
NUM_WARPS = 4


@triton.jit
def sign_of(x):
    """+1 / −1 / 0 in float32 (NaN compares false both ways: 0)."""
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0))


@triton.jit
def pack_tile(x, bit):
    """int32 words of a ``[W, 32]`` tile: the sum of ``1 << c`` over the channels with x > 0 (distinct bits,
    so the sum is their OR; bit 31 is INT_MIN and the sum never overflows)."""
    return tl.sum(tl.where(x > 0, 1 << bit[None, :], 0), axis=1)


@triton.jit
def _sign_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, sign_of(x).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _pack_kernel(tokens_ptr, words_ptr, num_words, BLOCK_WORDS: tl.constexpr):
    word = tl.program_id(0).to(tl.int64) * BLOCK_WORDS + tl.arange(0, BLOCK_WORDS)
    bit = tl.arange(0, 32)
    word_mask = word < num_words
    tokens = tl.load(tokens_ptr + word[:, None] * 32 + bit[None, :], mask=word_mask[:, None], other=0.0)
    tl.store(words_ptr + word, pack_tile(tokens, bit), mask=word_mask)


@triton.jit
def _unpack_kernel(words_ptr, tokens_ptr, num_words, BLOCK_WORDS: tl.constexpr):
    word = tl.program_id(0).to(tl.int64) * BLOCK_WORDS + tl.arange(0, BLOCK_WORDS)
    bit = tl.arange(0, 32)
    word_mask = word < num_words
    words = tl.load(words_ptr + word, mask=word_mask, other=0)
    is_set = ((words[:, None] >> bit[None, :]) & 1) != 0
    tokens = tl.where(is_set, 1.0, -1.0).to(tokens_ptr.dtype.element_ty)
    tl.store(tokens_ptr + word[:, None] * 32 + bit[None, :], tokens, mask=word_mask[:, None])


def sign_quantize(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``torch.sign(x)`` (0 -> 0, NaN -> 0) into ``out`` (same shape; float32, bfloat16 or float16; default
    ``x``'s dtype). ``out`` may be ``x`` itself."""
    check_tensor("sign_quantize", "x", x, dtype=FLOAT_DTYPES)
    if out is None:
        out = torch.empty_like(x)
    else:
        check_tensor("sign_quantize", "out", out, shape=tuple(x.shape), dtype=FLOAT_DTYPES, device=x.device)
    n = x.numel()
    if n:
        block = BLOCK_WORDS * BITS_PER_WORD
        _sign_kernel[(triton.cdiv(n, block),)](x, out, n, BLOCK=block, num_warps=NUM_WARPS, enable_fp_fusion=False)
    return out


def pack_signs(tokens: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Pack ``tokens [..., C]`` (float32, bfloat16 or float16; C a multiple of 32) into int32 ``[..., C / 32]``."""
    check_tensor("pack_signs", "tokens", tokens, dtype=FLOAT_DTYPES)
    if tokens.ndim == 0 or tokens.shape[-1] % BITS_PER_WORD:
        found = "a 0-d tensor" if tokens.ndim == 0 else f"{tokens.shape[-1]} channels"
        raise ValueError(f"pack_signs: tokens has {found}, expected a last dimension that is a multiple of "
                         f"{BITS_PER_WORD} (one int32 word per 32 channels)")
    shape = (*tokens.shape[:-1], tokens.shape[-1] // BITS_PER_WORD)
    if out is None:
        out = torch.empty(shape, dtype=torch.int32, device=tokens.device)
    else:
        check_tensor("pack_signs", "out", out, shape=shape, dtype=torch.int32, device=tokens.device)
    num_words = out.numel()
    if num_words:
        _pack_kernel[(triton.cdiv(num_words, BLOCK_WORDS),)](tokens, out, num_words, BLOCK_WORDS=BLOCK_WORDS,
                                                             num_warps=NUM_WARPS, enable_fp_fusion=False)
    return out


def unpack_signs(words: torch.Tensor, dtype: torch.dtype, out: torch.Tensor | None = None) -> torch.Tensor:
    """Unpack int32 ``words [..., W]`` into ±1 tokens ``[..., 32·W]`` of ``dtype`` (float32, bfloat16 or
    float16)."""
    check_tensor("unpack_signs", "words", words, dtype=torch.int32)
    if words.ndim == 0:
        raise ValueError("unpack_signs: words is a 0-d tensor, expected [..., W] int32 words")
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"unpack_signs: dtype is {dtype}, expected one of {', '.join(map(str, FLOAT_DTYPES))}")
    shape = (*words.shape[:-1], words.shape[-1] * BITS_PER_WORD)
    if out is None:
        out = torch.empty(shape, dtype=dtype, device=words.device)
    else:
        check_tensor("unpack_signs", "out", out, shape=shape, dtype=dtype, device=words.device)
    num_words = words.numel()
    if num_words:
        _unpack_kernel[(triton.cdiv(num_words, BLOCK_WORDS),)](words, out, num_words, BLOCK_WORDS=BLOCK_WORDS,
                                                               num_warps=NUM_WARPS, enable_fp_fusion=False)
    return out
