"""``bit_linear_ref`` (the projector's first layer on packed tokens) against ``F.linear`` on the ±1 tokens, on the
CPU: float64 exactly (a ±1 sum of float64 weights in any order differs by rounding only: relative 1e-12),
float32 and bfloat16 as ``F.linear`` in float32 rounded once (relative 1e-6, and 1e-2 for bfloat16 against a
float64 oracle); leading dimensions, no bias, and its argument errors.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bitdance_rt.reference.token_packing import bit_linear_ref, pack_signs_ref

FLOAT64_TOL = 1e-12
FLOAT32_TOL = 1e-6
BF16_TOL = 1e-2


def random_signs(*shape: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 2, shape, generator=gen) * 2 - 1).to(torch.float64)


def randn(*shape: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out64, ref64 = out.to(torch.float64), ref.to(torch.float64)
    assert torch.isfinite(out64).all()
    return ((out64 - ref64).norm() / ref64.norm()).item()


@pytest.mark.parametrize("channels", [32, 96])
def test_equals_linear_on_signs_float64(channels):
    tokens = random_signs(3, 7, channels, seed=channels)
    weight, bias = randn(40, channels, seed=1), randn(40, seed=2)
    out = bit_linear_ref(pack_signs_ref(tokens), weight, bias)
    assert out.shape == (3, 7, 40) and out.dtype == torch.float64
    assert relative_error(out, F.linear(tokens, weight, bias)) < FLOAT64_TOL


def test_float32_and_bf16_weights_round_once():
    """float32: F.linear in float32; bfloat16: F.linear in float32 rounded once to bfloat16 (what the projector's
    bf16 GEMM gives up to its accumulation order)."""
    tokens = random_signs(64, 32, seed=3)
    words = pack_signs_ref(tokens)
    weight64, bias64 = randn(128, 32, seed=4) * 0.2, randn(128, seed=5)
    exact = F.linear(tokens, weight64, bias64)
    weight32, bias32 = weight64.float(), bias64.float()
    out32 = bit_linear_ref(words, weight32, bias32)
    assert out32.dtype == torch.float32
    assert relative_error(out32, F.linear(tokens.float(), weight32, bias32)) < FLOAT32_TOL
    weight16, bias16 = weight64.bfloat16(), bias64.bfloat16()
    out16 = bit_linear_ref(words, weight16, bias16)
    assert out16.dtype == torch.bfloat16
    assert torch.equal(out16, F.linear(tokens.float(), weight16.float(), bias16.float()).bfloat16())
    assert relative_error(out16, exact) < BF16_TOL


def test_without_bias_and_negative_words():
    """No bias; rows whose bit 31 is set (negative words) and all-ones / all-zeros words."""
    tokens = random_signs(5, 64, seed=6)
    tokens[0] = 1.0
    tokens[1] = -1.0
    tokens[2, 31] = 1.0
    words = pack_signs_ref(tokens)
    assert (words < 0).any()
    weight = randn(9, 64, seed=7)
    assert relative_error(bit_linear_ref(words, weight), F.linear(tokens, weight)) < FLOAT64_TOL


def test_argument_errors():
    words = pack_signs_ref(random_signs(4, 64, seed=8))
    weight = randn(8, 64, seed=9)
    with pytest.raises(ValueError, match=r"bit_linear_ref: weight has shape \[8, 32\], expected \[H, 64\]"):
        bit_linear_ref(words, weight[:, :32])
    with pytest.raises(ValueError, match=r"bit_linear_ref: bias has shape \[7\], expected \[8\]"):
        bit_linear_ref(words, weight, randn(7, seed=10))
    with pytest.raises(ValueError, match="bit_linear_ref: words must be int32"):
        bit_linear_ref(words.long(), weight)
    with pytest.raises(ValueError, match="bit_linear_ref: words must be int32"):
        bit_linear_ref(torch.tensor(3, dtype=torch.int32), weight)
