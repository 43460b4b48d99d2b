"""Binary tokens as bits: ``C`` sign channels packed into ``C / 32`` int32 words, and back.

Bit order: bit ``c`` (value ``1 << c``, bit 31 being the sign bit of the int32) of word ``w`` is set iff
``token[..., 32·w + c] > 0``. A token of exactly 0 (``torch.sign`` of an exact 0.0 sample) and a NaN both pack
as a clear bit, so they unpack as −1: packing is lossless for ±1 tokens only. Unpacking gives ±1 in any float
dtype (what the token projector takes). With C = 32 a token costs one 4-byte word.
``bit_linear_ref`` is the projector's first layer taken on the packed words (``F.linear`` of the unpacked ±1
tokens).
"""

from __future__ import annotations

import torch

BITS_PER_WORD = 32


def _bit_values(device: torch.device) -> torch.Tensor:
    """``1 << c`` for c in 0..31, int64 (bit 31 stays positive here; wrapped to int32 after the sum)."""
    return torch.ones(BITS_PER_WORD, dtype=torch.int64, device=device) << torch.arange(BITS_PER_WORD, device=device)


def pack_signs_ref(tokens: torch.Tensor) -> torch.Tensor:
    """``tokens [..., C]`` (any float dtype, C a multiple of 32) -> int32 words ``[..., C / 32]``."""
    channels = tokens.shape[-1]
    if channels % BITS_PER_WORD:
        raise ValueError(f"pack_signs_ref: tokens have {channels} channels, expected a multiple of {BITS_PER_WORD}")
    bits = (tokens > 0).reshape(*tokens.shape[:-1], channels // BITS_PER_WORD, BITS_PER_WORD).to(torch.int64)
    words = (bits * _bit_values(tokens.device)).sum(dim=-1)
    return torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)


def unpack_signs_ref(words: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """int32 ``words [..., W]`` -> tokens ``[..., 32·W]`` of ±1 in ``dtype``."""
    bits = (words.to(torch.int64).unsqueeze(-1) & _bit_values(words.device)) != 0
    one = torch.ones((), dtype=dtype, device=words.device)
    return torch.where(bits, one, -one).reshape(*words.shape[:-1], words.shape[-1] * BITS_PER_WORD)


def bit_linear_ref(words: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The token projector's first layer on packed tokens: ``F.linear(unpack(words), weight, bias)``.

    ``words [..., W]`` int32, ``weight [H, 32·W]``, ``bias [H]`` or None -> ``[..., H]`` in ``weight``'s dtype.
    The ±1 tokens are unpacked in ``weight``'s dtype widened to at least float32, the product is taken there
    (float64 weights give an exact oracle) and the result is rounded once to ``weight``'s dtype.
    """
    if words.dtype != torch.int32 or words.ndim == 0:
        raise ValueError(f"bit_linear_ref: words must be int32 [..., W], found {words.dtype} of shape "
                         f"{list(words.shape)}")
    channels = words.shape[-1] * BITS_PER_WORD
    if weight.ndim != 2 or weight.shape[1] != channels:
        raise ValueError(f"bit_linear_ref: weight has shape {list(weight.shape)}, expected [H, {channels}] "
                         f"({words.shape[-1]} words of {BITS_PER_WORD} channels)")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bit_linear_ref: bias has shape {list(bias.shape)}, expected [{weight.shape[0]}]")
    wide = torch.promote_types(weight.dtype, torch.float32)
    tokens = unpack_signs_ref(words, wide)
    out = torch.nn.functional.linear(tokens, weight.to(wide), None if bias is None else bias.to(wide))
    return out.to(weight.dtype)
