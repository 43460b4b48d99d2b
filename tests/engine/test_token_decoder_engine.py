"""The engine's token decoder (``engine/token_decoder.py``: the kernels' GroupNorms, channels-last, chunked,
CUDA-graphed on a GPU) against the reference ``TokenDecoder`` (the oracle) on random weights: both tiny families'
decoder layout (``tiny_models.TINY_DDCONFIG``, plain and GAN), layouts whose widths change (1x1 shortcuts) and a
GAN decoder with two residual blocks per level. Float32, on the CPU through Triton's interpreter (the real kernels
on a GPU); outputs NaN-poisoned before the run, any NaN fails. Tolerance: relative error (Frobenius) below 1e-5
against the float64 reference decoder on the same weights, the float32 reference decoder itself is held to the
same bound. Chunking: a pass over more images than one chunk equals the passes over each chunk, bit for bit.
The runtime: the Triton backend decodes with this decoder and its images equal the reference backend's within
tolerance (``pt``) and within one level (``np``)."""

from __future__ import annotations

import copy

import pytest
import torch

from bitdance_rt.engine.memory import DECODE_PASS_BYTES, decoder_bytes_per_pixel, images_per_pass
from bitdance_rt.engine.token_decoder import EngineTokenDecoder, depth_to_space_nhwc
from bitdance_rt.ops import OpSet
from bitdance_rt.reference.token_decoder import DecoderLayout, TokenDecoder, depth_to_space, layout_from_ddconfig
from bitdance_rt.tiny_models import TINY_DDCONFIG
from engine_testing import ENGINE_DEVICE, placement

TOL = 1e-5
LAYOUTS = {
    "tiny_family": layout_from_ddconfig(TINY_DDCONFIG, False, "tiny"),
    "tiny_family_gan": layout_from_ddconfig(TINY_DDCONFIG, True, "tiny"),
    "widths": DecoderLayout(z_channels=32, level_channels=(32, 32, 64), num_res_blocks=1, out_channels=3,
                            gan_decoder=False),
    "gan_widths": DecoderLayout(z_channels=16, level_channels=(32, 64, 64), num_res_blocks=2, out_channels=3,
                                gan_decoder=True),
}


@pytest.fixture(autouse=True, scope="module")
def exact_float32_convolutions():
    """On a GPU cuDNN runs float32 convolutions in TF32 by default (a 10-bit mantissa): off while these tests run,
    so the bound measures float32 arithmetic (no effect on the CPU)."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = before


@pytest.fixture(scope="module")
def triton_ops():
    return OpSet(ENGINE_DEVICE, "triton")


def random_decoder(layout: DecoderLayout, seed: int) -> TokenDecoder:
    """Every parameter a fresh draw (norm affines around 1), float32 on the test device."""
    g = torch.Generator().manual_seed(seed)
    decoder = TokenDecoder(layout)
    with torch.no_grad():
        for name, p in decoder.named_parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return decoder.to(ENGINE_DEVICE).eval()


def random_tokens(n: int, channels: int, h: int, w: int, seed: int) -> torch.Tensor:
    """±1 with about one entry in ten exactly 0."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, channels, h, w, generator=g).sign()
    z[torch.rand(z.shape, generator=g) < 0.1] = 0.0
    return z.to(ENGINE_DEVICE)


def generator(seed: int) -> torch.Generator:
    return torch.Generator(device=ENGINE_DEVICE).manual_seed(seed)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = a.detach().double().cpu(), b.detach().double().cpu()
    assert torch.isfinite(a64).all(), f"{(~torch.isfinite(a64)).sum().item()} non-finite (unwritten?) elements"
    return ((a64 - b64).norm() / b64.norm()).item()


def poisoned_output(decoder: TokenDecoder, z: torch.Tensor) -> torch.Tensor:
    ds = decoder.layout.downsample
    return torch.full((z.shape[0], decoder.layout.out_channels, z.shape[2] * ds, z.shape[3] * ds), float("nan"),
                      device=z.device)


def reference64(decoder: TokenDecoder, z: torch.Tensor, seed: int | None) -> torch.Tensor:
    """The reference decoder in float64 on the same weights and tokens; a GAN decoder's noise is the float32 draw
    of ``seed`` (what the float32 decoders draw), as float64."""
    ref = copy.deepcopy(decoder).double()
    if decoder.layout.gan_decoder:
        noise = torch.randn(z.shape, generator=generator(seed), dtype=torch.float32, device=ENGINE_DEVICE)
        ref._noise_like = lambda z64, gen: noise.double()
    with torch.no_grad():
        return ref(z.double(), None)


# (layout, channels-last): both memory layouts, plain and GAN, widths that change (1x1 shortcuts) with two blocks
# per level; each case costs about 20 s in Triton's interpreter, so "widths" (a subset of "gan_widths") is left to
# the GPU test below
CASES = [("tiny_family", False), ("tiny_family_gan", True), ("gan_widths", True)]


@pytest.mark.parametrize("name, channels_last", CASES, ids=[f"{n}-{'nhwc' if c else 'nchw'}" for n, c in CASES])
def test_matches_the_reference_decoder(name, channels_last, triton_ops):
    layout = LAYOUTS[name]
    decoder = random_decoder(layout, seed=1)
    grid = (2, 3) if layout.downsample > 4 else (3, 4)
    z = random_tokens(1, layout.z_channels, *grid, seed=2)  # several images: test_chunks_equal_their_own_passes
    expected64 = reference64(decoder, z, 3)
    with torch.no_grad():
        expected32 = decoder(z, generator(3) if layout.gan_decoder else None)
    fast = EngineTokenDecoder(decoder, triton_ops, channels_last=channels_last)
    out = poisoned_output(decoder, z)
    gen = generator(3)
    assert fast(z, gen if layout.gan_decoder else None, out=out) is out
    assert rel(out, expected64) < TOL
    assert rel(expected32, expected64) < TOL  # the bound holds the reference itself too
    if layout.gan_decoder:  # the same draw: the generator is left where the reference leaves it
        ref_gen = generator(3)
        torch.randn(z.shape, generator=ref_gen, device=ENGINE_DEVICE)
        assert torch.equal(gen.get_state(), ref_gen.get_state())
    if channels_last:  # the module's conv weights were re-laid out in place, and it still computes the same
        assert decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            again = decoder(z, generator(3) if layout.gan_decoder else None)
        assert rel(again, expected64) < TOL


def test_chunks_equal_their_own_passes(triton_ops):
    """A GAN decoder, 3 images in passes of 2 (2 + 1): chunk by chunk exactly what one pass over that chunk gives
    (the noise is one draw for all 3, sliced), and the reference's pass over all 3 within tolerance."""
    layout = DecoderLayout(z_channels=16, level_channels=(32, 64), num_res_blocks=1, out_channels=3,
                           gan_decoder=True)
    decoder = random_decoder(layout, seed=4)
    fast = EngineTokenDecoder(decoder, triton_ops)
    z = random_tokens(3, layout.z_channels, 3, 2, seed=5)
    chunked = poisoned_output(decoder, z)
    fast(z, generator(6), chunk=2, out=chunked)
    noise = torch.randn(z.shape, generator=generator(6), device=ENGINE_DEVICE)
    for part in (slice(0, 2), slice(2, 3)):
        assert torch.equal(chunked[part], fast._run(z[part], noise[part]))
    assert rel(chunked, reference64(decoder, z, 6)) < TOL


def test_chunk_size_comes_from_the_memory_formula(triton_ops, monkeypatch):
    layout = DecoderLayout(z_channels=16, level_channels=(32, 32), num_res_blocks=1, out_channels=3,
                           gan_decoder=False)
    decoder = random_decoder(layout, seed=7)
    per_image = 8 * 8 * decoder_bytes_per_pixel(layout, 4)
    fast = EngineTokenDecoder(decoder, triton_ops, pass_bytes=int(2.5 * per_image))
    assert fast.chunk(8, 8) == 2 == images_per_pass(fast.bytes_per_pixel, 8, 8, int(2.5 * per_image))
    sizes = []
    ds = layout.downsample

    def counted(z, noise):  # what a pass returns, without computing it (the passes are checked above)
        sizes.append(z.shape[0])
        return torch.zeros(z.shape[0], layout.out_channels, z.shape[2] * ds, z.shape[3] * ds, device=z.device)
    monkeypatch.setattr(fast, "_run", counted)
    out = fast(random_tokens(5, layout.z_channels, 4, 4, seed=8))  # 8x8 images
    assert sizes == [2, 2, 1] and out.shape == (5, 3, 8, 8)


def test_release_decoder_chunks():
    """The released decoder (ch 256, ch_mult 1 1 2 2 4, 4 blocks) in bf16: its peak is level 0's first residual
    block (3 maps of 256 channels) plus the output; batch 256 at 256² runs in 8 passes of 32, batch 16 at 1024² in
    8 passes of 2, each within DECODE_PASS_BYTES."""
    release = layout_from_ddconfig({"ch": 256, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 4, "z_channels": 32,
                                    "out_ch": 3}, False, "release")
    per_pixel = decoder_bytes_per_pixel(release, 2)
    assert per_pixel == (3 * 256 + 3) * 2
    assert decoder_bytes_per_pixel(release, 2, fused=False) == (5 * 256 + 3) * 2  # the reference module's peak
    for side, images, chunk in ((256, 256, 32), (1024, 16, 2)):
        assert images_per_pass(per_pixel, side, side) == chunk
        assert chunk * side * side * per_pixel <= DECODE_PASS_BYTES
        assert images * side * side * per_pixel > DECODE_PASS_BYTES  # one pass over all would not fit


def test_depth_to_space_nhwc_is_the_reference_order():
    x = torch.randn(2, 12, 3, 5).contiguous(memory_format=torch.channels_last)
    got = depth_to_space_nhwc(x)
    assert got.is_contiguous(memory_format=torch.channels_last) and torch.equal(got, depth_to_space(x))


def test_engine_picks_the_decoder_by_provider(c2i16_files):
    """The engine decodes with the kernels' decoder when its GroupNorm ops are kernels, with the reference module
    (None: ``Family.decode``'s default) on the PyTorch operations; CUDA graphs are refused on the CPU."""
    from bitdance_rt.runtime import Runtime

    model, tokenizer = c2i16_files
    ref = Runtime.from_pretrained(model, tokenizer_path=tokenizer, **placement("reference"))
    assert ref.runner.engine.token_decoder is None
    fast = Runtime.from_pretrained(model, tokenizer_path=tokenizer, **placement("triton")).engine.token_decoder
    assert isinstance(fast, EngineTokenDecoder)
    assert fast.cuda_graphs == torch.cuda.is_available()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda_graphs"):
            EngineTokenDecoder(ref.model.decoder, OpSet("cpu", "triton"), cuda_graphs=True)


def test_runtime_images_match_the_reference_backend(c2i16_files):
    """``decode_tokens`` and a served request's preview on the Triton backend (the kernels' decoder) against the
    reference backend (the reference module), the same tokens."""
    from bitdance_rt.runtime import Runtime

    model, tokenizer = c2i16_files
    ref = Runtime.from_pretrained(model, tokenizer_path=tokenizer, **placement("reference"))
    rt = Runtime.from_pretrained(model, tokenizer_path=tokenizer, **placement("triton"))
    g = torch.Generator().manual_seed(9)
    tokens = torch.randn(1, 256, rt.family.token_channels, generator=g).sign()
    expected = ref.decode_tokens(tokens, 256, 256, output_type="pt")
    assert rel(rt.decode_tokens(tokens, 256, 256, output_type="pt"), expected) < TOL
    spec = type("Spec", (), {"num_images": 1, "grid": (16, 16), "seed": 0})()
    preview = rt.runner.preview("unknown", spec, "np")  # no tokens yet: the all-zero map, decoded
    # the all-zero map makes conv_in's output constant per channel: the first GroupNorm then scales rounding noise
    # by 1/sqrt(eps), so both decoders agree only to about 1e-3 here; pixels within one level
    assert abs(preview.astype(int) - ref.runner.preview("unknown", spec, "np").astype(int)).max() <= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs and the memory peak need a GPU")
@pytest.mark.parametrize("name", ["widths", "gan_widths"])
def test_graphed_passes_equal_eager_and_stay_within_the_formula(name):
    layout = LAYOUTS[name]
    decoder = random_decoder(layout, seed=10)
    ops = OpSet("cuda", "triton")
    eager = EngineTokenDecoder(copy.deepcopy(decoder), ops, cuda_graphs=False)
    graphed = EngineTokenDecoder(decoder, ops, cuda_graphs=True)
    z = random_tokens(5, layout.z_channels, 4, 4, seed=11)
    gan = layout.gan_decoder
    for _ in range(2):  # capture, then replay
        got = graphed(z, generator(12) if gan else None, chunk=2)
        assert torch.equal(got, eager(z, generator(12) if gan else None, chunk=2))
    assert sorted(graphed._graphs) == [(1, layout.z_channels, 4, 4), (2, layout.z_channels, 4, 4)]
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    z = random_tokens(4, layout.z_channels, 8, 8, seed=13)
    eager(z, generator(12) if gan else None, chunk=4)
    side = 8 * layout.downsample
    formula = 4 * side * side * eager.bytes_per_pixel
    peak = torch.cuda.max_memory_allocated() - before
    assert peak <= 1.25 * formula + (1 << 20), (peak, formula)
