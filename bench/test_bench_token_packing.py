"""Microbenchmarks of sign quantization and bit packing (CUDA GPU) over 256 × 4,096 tokens of C = 32 channels (a
batch of 256 images of 4,096 tokens: 1,048,576 tokens, 4 MiB packed), each beside the PyTorch reference.

``sign_quantize``: float32 samples -> bf16 tokens; ``pack_signs``: bf16 tokens -> int32 words; ``unpack_signs``:
words -> bf16 tokens (the projector's input). ``extra_info``: CUDA-event times of back-to-back calls of ours
(``ours_s``) and the reference (``reference_s``), bytes read + written, the memory floor (``floor_s``),
``ours_over_floor`` and the GPU environment.
"""

from __future__ import annotations


import floors
import torch
from shapes import T2I_14B

from bitdance_rt.kernels.token_packing import pack_signs, sign_quantize, unpack_signs
from bitdance_rt.reference.token_packing import pack_signs_ref, unpack_signs_ref

TOKENS_DTYPE = torch.bfloat16
SHAPE = (256, 4096, T2I_14B["token_channels"])
NUM_TOKENS = SHAPE[0] * SHAPE[1]
CHANNELS = SHAPE[2]




def random_samples() -> torch.Tensor:
    gen = torch.Generator(device="cuda").manual_seed(0)
    return torch.randn(SHAPE, generator=gen, device="cuda")


def test_bench_sign_quantize(benchmark):
    samples = random_samples()
    tokens = torch.empty(SHAPE, dtype=TOKENS_DTYPE, device="cuda")
    record(benchmark, lambda: sign_quantize(samples, out=tokens), lambda: torch.sign(samples).to(TOKENS_DTYPE),
            bytes_moved=NUM_TOKENS * CHANNELS * (4 + 2))


def test_bench_pack_signs(benchmark):
    tokens = torch.sign(random_samples()).to(TOKENS_DTYPE)
    words = torch.empty(SHAPE[0], SHAPE[1], CHANNELS // 32, dtype=torch.int32, device="cuda")
    record(benchmark, lambda: pack_signs(tokens, out=words), lambda: pack_signs_ref(tokens),
            bytes_moved=NUM_TOKENS * (CHANNELS * 2 + CHANNELS // 8))


def test_bench_unpack_signs(benchmark):
    words = pack_signs_ref(random_samples())
    tokens = torch.empty(SHAPE, dtype=TOKENS_DTYPE, device="cuda")
    record(benchmark, lambda: unpack_signs(words, TOKENS_DTYPE, out=tokens),
            lambda: unpack_signs_ref(words, TOKENS_DTYPE), bytes_moved=NUM_TOKENS * (CHANNELS // 8 + CHANNELS * 2))


def record(benchmark, ours, reference, bytes_moved: float) -> None:
    floors.record_row(benchmark, ours, {"reference": reference}, bytes_moved)
