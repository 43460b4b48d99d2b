"""Microbenchmarks of sign quantization and bit packing (CUDA GPU) over 256 × 4,096 tokens of C = 32 channels (a
batch of 256 images of 4,096 tokens: 1,048,576 tokens, 4 MiB packed), each beside the PyTorch reference.

``sign_quantize``: float32 samples -> bf16 tokens; ``pack_signs``: bf16 tokens -> int32 words; ``unpack_signs``:
words -> bf16 tokens (the projector's input). ``extra_info``: CUDA-event times of back-to-back calls of ours
(``ours_s``) and the reference (``reference_s``), bytes read + written, the memory floor (``floor_s``),
``ours_over_floor`` and the GPU environment.
"""

from __future__ import annotations

from collections.abc import Callable

import floors
import torch
from shapes import T2I_14B

from bitdance_rt.kernels.token_packing import pack_signs, sign_quantize, unpack_signs
from bitdance_rt.reference.token_packing import pack_signs_ref, unpack_signs_ref

TOKENS_DTYPE = torch.bfloat16
SHAPE = (256, 4096, T2I_14B["token_channels"])
NUM_TOKENS = SHAPE[0] * SHAPE[1]
CHANNELS = SHAPE[2]


def measure(benchmark, ours: Callable[[], object], reference: Callable[[], object], bytes_moved: float) -> None:
    """CUDA-event times of ours and the reference, the floor and the ratio into ``extra_info``; ours through
    pytest-benchmark, each round synchronised."""
    floor = floors.floor_seconds(bytes_moved=bytes_moved)
    ours_s = floors.time_cuda(ours, iters=100)
    reference_s = floors.time_cuda(reference, iters=100)
    benchmark.extra_info.update({"floor_s": floor, "bytes": bytes_moved, "flops": 0.0, "ours_s": ours_s,
                                 "reference_s": reference_s, "ours_over_floor": ours_s / floor,
                                 **floors.environment()})

    def synchronized():
        ours()
        torch.cuda.synchronize()

    benchmark.pedantic(synchronized, rounds=50, warmup_rounds=5)


def random_samples() -> torch.Tensor:
    gen = torch.Generator(device="cuda").manual_seed(0)
    return torch.randn(SHAPE, generator=gen, device="cuda")


def test_bench_sign_quantize(benchmark):
    samples = random_samples()
    tokens = torch.empty(SHAPE, dtype=TOKENS_DTYPE, device="cuda")
    measure(benchmark, lambda: sign_quantize(samples, out=tokens), lambda: torch.sign(samples).to(TOKENS_DTYPE),
            bytes_moved=NUM_TOKENS * CHANNELS * (4 + 2))


def test_bench_pack_signs(benchmark):
    tokens = torch.sign(random_samples()).to(TOKENS_DTYPE)
    words = torch.empty(SHAPE[0], SHAPE[1], CHANNELS // 32, dtype=torch.int32, device="cuda")
    measure(benchmark, lambda: pack_signs(tokens, out=words), lambda: pack_signs_ref(tokens),
            bytes_moved=NUM_TOKENS * (CHANNELS * 2 + CHANNELS // 8))


def test_bench_unpack_signs(benchmark):
    words = pack_signs_ref(random_samples())
    tokens = torch.empty(SHAPE, dtype=TOKENS_DTYPE, device="cuda")
    measure(benchmark, lambda: unpack_signs(words, TOKENS_DTYPE, out=tokens),
            lambda: unpack_signs_ref(words, TOKENS_DTYPE), bytes_moved=NUM_TOKENS * (CHANNELS // 8 + CHANNELS * 2))
