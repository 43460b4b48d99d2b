"""The token decoder at the released shapes (bf16 on a CUDA GPU): the reference ``TokenDecoder`` (NCHW, PyTorch's
GroupNorm then swish) beside the engine's ``EngineTokenDecoder`` (channels-last, the ``group_norm_silu`` /
``token_styled_group_norm`` kernels), eager and CUDA-graphed, on the same random weights and tokens.

Shapes: the released decoder (ch 256, ch_mult 1 1 2 2 4, 4 residual blocks, 32 token channels; bench/model_shapes.py
``release_decoder``) at batch 256 of 256² (a 16x16 token grid; class-conditional batch) and batch 16 of 1024² (64x64;
text-to-image), both in passes of ``EngineTokenDecoder.chunk`` images (``engine/memory.py``: the pass peak within
``DECODE_PASS_BYTES``); the reference runs the same chunks. ``extra_info``: seconds per whole batch of each
(``reference_s``, ``eager_s``, ``graphed_s``; CUDA events, a few calls each), images/s, the chunk, the measured
peak of one eager pass beside the memory formula's estimate, and the environment. pytest-benchmark times the
graphed decoder, each round synchronised. Skipped without CUDA (bench/conftest.py)."""

from __future__ import annotations

import copy

import floors
import pytest
import torch
from model_shapes import release_decoder

from bitdance_rt.engine.token_decoder import EngineTokenDecoder
from bitdance_rt.ops import OpSet
from bitdance_rt.reference.token_decoder import TokenDecoder

DTYPE = torch.bfloat16
SHAPES = {"c2i_256x256_batch256": (256, 16), "t2i_1024x1024_batch16": (16, 64)}  # images, token grid side


@pytest.fixture(scope="module")
def decoders():
    torch.manual_seed(0)
    with torch.device("cuda"):
        reference = TokenDecoder(release_decoder()).to(DTYPE).eval()
    ops = OpSet("cuda", "cuda")
    eager = EngineTokenDecoder(copy.deepcopy(reference), ops, cuda_graphs=False)
    graphed = EngineTokenDecoder(copy.deepcopy(reference), ops, cuda_graphs=True)
    return reference, eager, graphed


@pytest.mark.parametrize("shape", list(SHAPES))
def test_bench_token_decoder(benchmark, shape, decoders):
    reference, eager, graphed = decoders
    images, side = SHAPES[shape]
    layout = reference.layout
    z = floors.cuda_randn(images, layout.z_channels, side, side, seed=1).sign().to(DTYPE)
    pixels = side * layout.downsample
    chunk = eager.chunk(pixels, pixels)

    @torch.no_grad()
    def run_reference():
        return torch.cat([reference(z[i:i + chunk]) for i in range(0, images, chunk)])

    def run_eager():
        return eager(z)

    def run_graphed():
        return graphed(z)

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    eager(z[:chunk])
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    times = {name: floors.time_cuda(fn, warmup=1, iters=3)
             for name, fn in (("reference", run_reference), ("eager", run_eager), ("graphed", run_graphed))}
    rel = ((run_graphed().double() - run_reference().double()).norm() / run_reference().double().norm()).item()
    benchmark.extra_info.update({
        "images": images, "height": pixels, "width": pixels, "chunk": chunk,
        **{f"{name}_s": t for name, t in times.items()},
        **{f"{name}_images_per_s": images / t for name, t in times.items()},
        "graphed_speedup_over_reference": times["reference"] / times["graphed"],
        "pass_peak_bytes_measured": peak, "pass_peak_bytes_formula": chunk * pixels * pixels * eager.bytes_per_pixel,
        "relative_error_vs_reference": rel, **floors.environment()})

    def synchronized():
        run_graphed()
        torch.cuda.synchronize()

    benchmark.pedantic(synchronized, rounds=3, warmup_rounds=1)
