"""Microbenchmarks of the CUDA extension's token packing (``bitdance_rt.cuda_ops.token_packing``) beside the
Triton kernels and the PyTorch references of the same operations (CUDA GPU).

- ``pack_signs`` / ``unpack_signs``: 256 × 4,096 tokens of C = 32 channels in bf16 (the rows of
  bench/test_bench_token_packing.py), memory-bound: floor from the bytes read + written.
- ``bit_linear``: the T2I projector's first layer (C = 32 -> 5,120, bf16 weight and bias) on the packed tokens of
  one AR step (2 guidance rows × P = 64 or 16, and 16 rows × P = 64 at batch 8) and on 256 × 64 tokens. Candidates:
  ``F.linear`` on already unpacked bf16 tokens (``linear_on_tokens``), Triton ``unpack_signs`` + ``F.linear``
  (``triton``) and ``bit_linear_ref`` (``reference``). Floor from bytes moved (words, weight, bias, output) and
  the FLOPs ``2·R·H·C`` at the bf16 matrix rate.

``extra_info`` (``floors.record_row``): graphed times of ours and every candidate, our eager time, bytes, floor,
``ours_over_floor`` and the GPU environment.
"""

from __future__ import annotations

import floors
import pytest
import torch
import torch.nn.functional as F
from shapes import T2I_14B

from bitdance_rt.cuda_ops import token_packing as cuda_packing
from bitdance_rt.kernels import token_packing as triton_packing
from bitdance_rt.reference.token_packing import bit_linear_ref, pack_signs_ref, unpack_signs_ref

TOKENS_DTYPE = torch.bfloat16
ELEMENT = 2  # bytes per bf16 element
CHANNELS = T2I_14B["token_channels"]
HIDDEN = T2I_14B["hidden"]
WORDS = CHANNELS // 32
SHAPE = (256, 4096, CHANNELS)
NUM_TOKENS = SHAPE[0] * SHAPE[1]
LINEAR_ROWS = {"b1_p64": 2 * 64, "b1_p16": 2 * 16, "b8_p64": 16 * 64, "b256x64": 256 * 64}


def random_words(*shape: int) -> torch.Tensor:
    gen = torch.Generator(device="cuda").manual_seed(sum(shape))
    return torch.randint(-2 ** 31, 2 ** 31, shape, generator=gen, device="cuda", dtype=torch.int64).to(torch.int32)


def test_bench_cuda_pack_signs(benchmark):
    tokens = triton_packing.unpack_signs(random_words(SHAPE[0], SHAPE[1], WORDS), TOKENS_DTYPE)
    words = torch.empty(SHAPE[0], SHAPE[1], WORDS, dtype=torch.int32, device="cuda")
    triton_words = torch.empty_like(words)
    floors.record_row(benchmark, lambda: cuda_packing.pack_signs(tokens, out=words),
                      {"triton": lambda: triton_packing.pack_signs(tokens, out=triton_words),
                       "reference": lambda: pack_signs_ref(tokens)},
                      bytes_moved=NUM_TOKENS * (CHANNELS * ELEMENT + CHANNELS // 8))


def test_bench_cuda_unpack_signs(benchmark):
    words = random_words(SHAPE[0], SHAPE[1], WORDS)
    tokens = torch.empty(SHAPE, dtype=TOKENS_DTYPE, device="cuda")
    triton_tokens = torch.empty_like(tokens)
    floors.record_row(benchmark, lambda: cuda_packing.unpack_signs(words, TOKENS_DTYPE, out=tokens),
                      {"triton": lambda: triton_packing.unpack_signs(words, TOKENS_DTYPE, out=triton_tokens),
                       "reference": lambda: unpack_signs_ref(words, TOKENS_DTYPE)},
                      bytes_moved=NUM_TOKENS * (CHANNELS // 8 + CHANNELS * ELEMENT))


@pytest.mark.parametrize("rows", list(LINEAR_ROWS.values()), ids=list(LINEAR_ROWS))
def test_bench_cuda_bit_linear(benchmark, rows):
    words = random_words(rows, WORDS)
    weight = floors.cuda_randn(HIDDEN, CHANNELS, seed=1, scale=CHANNELS ** -0.5)
    bias = floors.cuda_randn(HIDDEN, seed=2, scale=0.1)
    out = torch.empty(rows, HIDDEN, dtype=TOKENS_DTYPE, device="cuda")
    tokens = triton_packing.unpack_signs(words, TOKENS_DTYPE)
    scratch = torch.empty_like(tokens)

    def triton_unpack_linear():
        return F.linear(triton_packing.unpack_signs(words, TOKENS_DTYPE, out=scratch), weight, bias)

    bytes_moved = rows * WORDS * 4 + (HIDDEN * CHANNELS + HIDDEN + rows * HIDDEN) * ELEMENT
    floors.record_row(benchmark, lambda: cuda_packing.bit_linear(words, weight, bias, out=out),
                      {"linear_on_tokens": lambda: F.linear(tokens, weight, bias), "triton": triton_unpack_linear,
                       "reference": lambda: bit_linear_ref(words, weight, bias)},
                      bytes_moved=bytes_moved, flops=2 * rows * HIDDEN * CHANNELS)
