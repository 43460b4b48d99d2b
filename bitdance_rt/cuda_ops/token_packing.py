"""Bit packing of binary tokens and the projector's first layer from the bits, on the CUDA extension
(``csrc/token_packing.cu``).

- ``pack_signs(tokens [..., C], out=None)`` -> int32 ``[..., C / 32]``: bit ``c`` of word ``w`` is set iff
  ``tokens[..., 32·w + c] > 0`` (``reference.token_packing``'s bit order; 0 and NaN pack as −1). Tokens float32,
  bfloat16 or float16, C a multiple of 32.
- ``unpack_signs(words [..., W], dtype, out=None)`` -> ``[..., 32·W]`` of ±1 in ``dtype``.
- ``bit_linear(words [..., W], weight [H, 32·W], bias [H] or None, out=None)`` -> ``[..., H]`` in ``weight``'s
  dtype: ``F.linear`` of the unpacked ±1 tokens, computed from the bits (no float tokens in memory), float32
  accumulation, one rounding at the end.

Same signatures, checks and results as the Triton launchers of ``kernels/token_packing.py`` (pack and unpack are
exact); every tensor contiguous and on one CUDA device. Outputs are written in place when given, so the calls can
be captured in a CUDA graph.
"""

from __future__ import annotations

import math

import torch

from bitdance_rt.ops.argument_checks import check_tensor
from bitdance_rt.reference.token_packing import BITS_PER_WORD, bit_linear_ref, pack_signs_ref, unpack_signs_ref
from bitdance_rt.cuda_ops._extension import operator

REFERENCE = {"pack_signs": pack_signs_ref, "unpack_signs": unpack_signs_ref, "bit_linear": bit_linear_ref}

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_OUTPUT_TILES = 65535  # bit_linear's grid: outputs in tiles of 128 on the grid's y axis
OUTPUT_TILE = 128


def _operator(op: str, device: torch.device):
    return operator(op, device, "token_packing", "token_packing.cu")


def pack_signs(tokens: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Pack ``tokens [..., C]`` (float32, bfloat16 or float16; C a multiple of 32) into int32 ``[..., C / 32]``."""
    op = "pack_signs"
    check_tensor(op, "tokens", tokens, dtype=FLOAT_DTYPES)
    if tokens.ndim == 0 or tokens.shape[-1] % BITS_PER_WORD:
        found = "a 0-d tensor" if tokens.ndim == 0 else f"{tokens.shape[-1]} channels"
        raise ValueError(f"{op}: tokens has {found}, expected a last dimension that is a multiple of "
                         f"{BITS_PER_WORD} (one int32 word per 32 channels)")
    shape = (*tokens.shape[:-1], tokens.shape[-1] // BITS_PER_WORD)
    if out is not None:
        check_tensor(op, "out", out, shape=shape, dtype=torch.int32, device=tokens.device)
    kernel = _operator(op, tokens.device)
    if out is None:
        out = torch.empty(shape, dtype=torch.int32, device=tokens.device)
    kernel(tokens, out)
    return out


def unpack_signs(words: torch.Tensor, dtype: torch.dtype, out: torch.Tensor | None = None) -> torch.Tensor:
    """Unpack int32 ``words [..., W]`` into ±1 tokens ``[..., 32·W]`` of ``dtype`` (float32, bfloat16 or
    float16)."""
    op = "unpack_signs"
    check_tensor(op, "words", words, dtype=torch.int32)
    if words.ndim == 0:
        raise ValueError(f"{op}: words is a 0-d tensor, expected [..., W] int32 words")
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"{op}: dtype is {dtype}, expected one of {', '.join(map(str, FLOAT_DTYPES))}")
    shape = (*words.shape[:-1], words.shape[-1] * BITS_PER_WORD)
    if out is not None:
        check_tensor(op, "out", out, shape=shape, dtype=dtype, device=words.device)
    kernel = _operator(op, words.device)
    if out is None:
        out = torch.empty(shape, dtype=dtype, device=words.device)
    kernel(words, out)
    return out


def bit_linear(words: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(unpack_signs(words), weight, bias)`` from the bits: ``words [..., W]`` int32, ``weight [H, 32·W]``
    (float32, bfloat16 or float16), ``bias [H]`` in weight's dtype or None; returns ``[..., H]`` in weight's
    dtype (into ``out`` when given)."""
    op = "bit_linear"
    check_tensor(op, "words", words, dtype=torch.int32)
    if words.ndim == 0:
        raise ValueError(f"{op}: words is a 0-d tensor, expected [..., W] int32 words")
    channels = words.shape[-1] * BITS_PER_WORD
    check_tensor(op, "weight", weight, shape=(None, channels), dtype=FLOAT_DTYPES, device=words.device)
    outputs = weight.shape[0]
    if -(-outputs // OUTPUT_TILE) > MAX_OUTPUT_TILES:
        raise ValueError(f"{op}: weight has {outputs} outputs, at most {MAX_OUTPUT_TILES * OUTPUT_TILE} fit the "
                         "kernel's grid; split the weight's rows")
    if bias is not None:
        check_tensor(op, "bias", bias, shape=(outputs,), dtype=weight.dtype, device=words.device)
    shape = (*words.shape[:-1], outputs)
    if out is not None:
        check_tensor(op, "out", out, shape=shape, dtype=weight.dtype, device=words.device)
    kernel = _operator(op, words.device)
    if out is None:
        out = torch.empty(shape, dtype=weight.dtype, device=words.device)
    rows = math.prod(words.shape[:-1])
    kernel(words.view(rows, words.shape[-1]), weight, bias, out.view(rows, outputs))
    return out
