"""The weight quantizers, bit for bit.

fp8: the codes are compared as bytes with ``(w / scale).to(torch.float8_e4m3fn)`` of the returned scales, and the
scales with amax / 448 derived independently in float64 (amax found by a Python loop over the channel or block);
the largest element of each channel or block is ±448 (bytes 0x7E / 0xFE); quotients that round above 448 saturate
to ±448, never to NaN (0x7F). int8: codes against a float64 derivation (the float32 quotient, then round half to
even), ties checked on crafted values. Zero rows and blocks get a finite positive scale and codes that dequantize to
exactly 0; NaN and Inf are refused with an error naming the tensor. Chunked quantization equals unchunked; the
source is never modified; ``concat_quantized`` equals quantizing the concatenation; ``nbytes`` counts the scales.
Shapes that are not multiples of 128 (edge blocks), bf16 and float32 sources. CPU only (plain PyTorch).
"""

from __future__ import annotations

import pytest
import torch
from quant_testing import FP8, as_bytes, e4m3_values, randn

from bitdance_rt.errors import CheckpointError, InvalidRequestError
from bitdance_rt.quantization import quantized_weight as qwmod
from bitdance_rt.quantization.formats import FP8_MAX, INT8_MAX, SCALE_FLOOR
from bitdance_rt.quantization.quantized_weight import (QuantizedWeight, concat_quantized, dequantize, quantize_fp8,
                                                       quantize_int8, quantize_weight)

SHAPES = [(7, 33), (200, 300), (256, 128)]
SOURCES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16")]


def weight(n: int, k: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """Rows of different magnitudes (so per-channel scales differ) with a few outliers."""
    w = randn(n, k, seed=seed, device="cpu") * torch.logspace(-2, 1, n, dtype=torch.float32)[:, None]
    w[::5, ::7] *= 9.0
    return w.to(dtype)


def expected_scales(w: torch.Tensor, qmax: float, block: int | None) -> torch.Tensor:
    """amax / qmax (floored) in float64, one Python loop per channel or block, rounded once to float32."""
    w64 = w.double()
    n, k = w64.shape
    if block is None:
        amax = [w64[i].abs().max().item() for i in range(n)]
        scales = torch.tensor(amax, dtype=torch.float64) / qmax
    else:
        rows = range(0, n, block)
        scales = torch.tensor([[w64[r:r + block, c:c + block].abs().max().item() / qmax
                                for c in range(0, k, block)] for r in rows], dtype=torch.float64)
    return scales.clamp_min(SCALE_FLOOR).to(torch.float32)


def per_element(scales: torch.Tensor, n: int, k: int, block: int | None) -> torch.Tensor:
    if block is None:
        return scales[:, None].expand(n, k)
    rows = torch.arange(n) // block
    cols = torch.arange(k) // block
    return scales[rows[:, None], cols[None, :]]


@pytest.mark.parametrize("dtype", SOURCES)
@pytest.mark.parametrize("block", [None, 128], ids=["channel", "block128"])
@pytest.mark.parametrize("n,k", SHAPES)
def test_fp8_codes_bitwise(n, k, block, dtype):
    w = weight(n, k, seed=n + k, dtype=dtype)
    before = w.clone()
    qw = quantize_fp8(w, block)
    assert torch.equal(w, before), "the source was modified"
    assert qw.fmt == "fp8" and qw.block == block and qw.data.dtype == FP8 and qw.shape == (n, k)
    assert torch.equal(qw.scales, expected_scales(w, FP8_MAX, block))
    quotient = w.float() / per_element(qw.scales, n, k, block)
    assert torch.equal(as_bytes(qw.data), as_bytes(quotient.to(FP8)))
    # every channel or block reaches ±448 at its largest element
    magnitudes = qw.data.float().abs()
    if block is None:
        assert (magnitudes.amax(dim=1) == FP8_MAX).all()
    else:
        for r in range(0, n, block):
            for c in range(0, k, block):
                assert magnitudes[r:r + block, c:c + block].max() == FP8_MAX


def test_fp8_rounding_is_nearest_ties_to_even():
    """Against the table of all finite e4m3 values: every code is the nearest value to its quotient, and exact
    midpoints go to the value with an even last mantissa bit (torch's cast, checked independently here)."""
    table = e4m3_values()
    w = randn(64, 256, seed=3, device="cpu")
    w[0, :5] = torch.tensor([448.0, 1.0625 * 448 / 448, 1.1875, 2 ** -10, 3 * 2 ** -10])  # row 0: scale 1, ties
    qw = quantize_fp8(w)
    quotient = (w.float() / qw.scales[:, None]).double()
    codes = qw.data.double()
    distance = (quotient[..., None] - table).abs()
    nearest = distance.min(dim=-1).values
    assert torch.equal((quotient - codes).abs(), nearest)
    assert qw.scales[0] == 1.0
    assert qw.data[0, :5].double().tolist() == [448.0, 1.0, 1.25, 0.0, 2 ** -8]


def test_fp8_saturates_at_448_never_nan():
    """amax / (amax / 448) rounds above 448 in float32 for some amax: those quotients must give ±448 (0x7E/0xFE)."""
    candidates = torch.linspace(1.0, 2.0, 20001, dtype=torch.float32)
    over = candidates[(candidates / (candidates / FP8_MAX)) > FP8_MAX]
    assert over.numel() > 0, "no float32 amax with quotient above 448 found; the test needs a new search range"
    w = torch.stack([over[:8], -over[:8]], dim=1).T.contiguous()  # rows [amax.., -amax..]
    w = torch.cat([w, torch.zeros(2, 8)], dim=1)
    for block in (None, 128):
        qw = quantize_fp8(w, block)
        codes = as_bytes(qw.data)
        assert (codes != 0x7F).all() and (codes != 0xFF).all(), "a code saturated to NaN"
        peaks = codes[:, :8].flatten().tolist()
        assert set(peaks) <= {0x7E, 0xFE} and 0x7E in peaks and 0xFE in peaks


@pytest.mark.parametrize("fmt,block", [("fp8", None), ("fp8", 128), ("int8", None)])
def test_zero_rows_and_blocks(fmt, block):
    w = randn(256, 300, seed=4, device="cpu")
    w[3] = 0.0
    w[128:256, 128:256] = 0.0  # one whole 128x128 block
    qw = quantize_weight(w, fmt, block=block)
    assert torch.isfinite(qw.scales).all() and (qw.scales > 0).all()
    deq = dequantize(qw)
    assert (deq[3] == 0).all() and (deq[128:256, 128:256] == 0).all()
    assert (as_bytes(qw.data)[3] == 0).all()
    if block is not None:
        assert qw.scales[1, 1] == SCALE_FLOOR
    else:
        assert qw.scales[3] == SCALE_FLOOR


@pytest.mark.parametrize("fmt,block", [("fp8", None), ("fp8", 128), ("int8", None)])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_non_finite_weights_are_refused(fmt, block, bad):
    w = randn(300, 64, seed=5, device="cpu")
    w[257, 3] = bad
    w[290, 0] = bad
    with pytest.raises(CheckpointError, match=r"layers\.0\.mlp\.up_proj\.weight: holds 2 non-finite value\(s\) "
                                              r"\(NaN or Inf\), first in row 257"):
        quantize_weight(w, fmt, block=block, name="layers.0.mlp.up_proj.weight")


@pytest.mark.parametrize("dtype", SOURCES)
@pytest.mark.parametrize("n,k", SHAPES)
def test_int8_codes_bitwise(n, k, dtype):
    w = weight(n, k, seed=2 * n + k, dtype=dtype)
    qw = quantize_int8(w)
    assert qw.fmt == "int8" and qw.data.dtype == torch.int8 and qw.block is None
    assert torch.equal(qw.scales, expected_scales(w, INT8_MAX, None))
    # the float32 quotient, derived in float64 and rounded once to float32, then half to even
    quotient = (w.double() / qw.scales.double()[:, None]).to(torch.float32).double()
    expected = torch.round(quotient).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    assert torch.equal(qw.data, expected)
    assert (qw.data.abs().amax(dim=1) == INT8_MAX).all()
    assert qw.data.min() >= -INT8_MAX


def test_int8_ties_to_even():
    w = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -2.5, 126.5, -3.5]])
    qw = quantize_int8(w)
    assert qw.scales.item() == 1.0
    assert qw.data.tolist() == [[127, 0, 2, 2, 0, -2, 126, -4]]


@pytest.mark.parametrize("fmt,block", [("fp8", None), ("fp8", 128), ("int8", None)])
def test_chunked_equals_whole(monkeypatch, fmt, block):
    w = weight(700, 200, seed=6, dtype=torch.bfloat16)
    whole = quantize_weight(w, fmt, block=block)
    monkeypatch.setattr(qwmod, "CHUNK_ROWS", 128)
    chunked = quantize_weight(w, fmt, block=block)
    assert torch.equal(as_bytes(chunked.data), as_bytes(whole.data))
    assert torch.equal(chunked.scales, whole.scales)


@pytest.mark.parametrize("fmt,block", [("fp8", None), ("fp8", 128), ("int8", None)])
def test_dequantize_and_nbytes(fmt, block):
    n, k = 200, 300
    qw = quantize_weight(weight(n, k, seed=7, dtype=torch.float32), fmt, block=block)
    deq = dequantize(qw, torch.float64)
    for i, j in [(0, 0), (5, 299), (199, 128), (130, 131), (127, 255)]:
        scale = qw.scales[i] if block is None else qw.scales[i // 128, j // 128]
        assert deq[i, j].item() == qw.data[i, j].double().item() * scale.double().item()
    assert dequantize(qw, torch.bfloat16).dtype == torch.bfloat16
    scale_count = n if block is None else 2 * 3
    assert qw.nbytes() == n * k + 4 * scale_count


@pytest.mark.parametrize("fmt,block", [("fp8", None), ("fp8", 128), ("int8", None)])
def test_concat_equals_quantizing_the_concatenation(fmt, block):
    parts = [weight(rows, 256, seed=rows, dtype=torch.float32) for rows in (256, 128, 40)]
    fused = concat_quantized([quantize_weight(p, fmt, block=block) for p in parts])
    direct = quantize_weight(torch.cat(parts), fmt, block=block)
    assert torch.equal(as_bytes(fused.data), as_bytes(direct.data)) and torch.equal(fused.scales, direct.scales)


def test_argument_errors():
    w = weight(130, 64, seed=8, dtype=torch.float32)
    with pytest.raises(InvalidRequestError, match="block must be None .* or 128, found 64"):
        quantize_fp8(w, 64)
    with pytest.raises(InvalidRequestError, match="int8 weights have one scale per output channel"):
        quantize_weight(w, "int8", block=128)
    with pytest.raises(InvalidRequestError, match="weight format 'int4' is unknown"):
        quantize_weight(w, "int4")
    with pytest.raises(InvalidRequestError, match=r"only 2-D float weights .* found torch.int64"):
        quantize_int8(torch.ones(3, 3, dtype=torch.int64))
    with pytest.raises(InvalidRequestError, match="meta device"):
        quantize_fp8(torch.empty(4, 4, device="meta"))
    qw = quantize_fp8(w, 128)
    with pytest.raises(InvalidRequestError, match=r"scales have shape \[130\], expected \[2, 1\]"):
        QuantizedWeight(qw.data, torch.ones(130), "fp8", 128)
    with pytest.raises(InvalidRequestError, match="block must be None or 128 \\(fp8 only\\)"):
        QuantizedWeight(quantize_int8(w).data, torch.ones(2, 1), "int8", 128)
    with pytest.raises(InvalidRequestError, match="not a multiple of the 128-row scale blocks"):
        concat_quantized([quantize_fp8(w, 128), quantize_fp8(w, 128)])
    with pytest.raises(InvalidRequestError, match="part 1 is int8"):
        concat_quantized([quantize_fp8(w), quantize_int8(w)])
