"""Sign quantization and bit packing: ``sign_quantize`` bitwise ``torch.sign``, ``pack_signs`` / ``unpack_signs`` equal
to the torch references and to literal words (the bit order), exact round trips, poisoned outputs, argument errors.
"""

from __future__ import annotations

import pytest
import torch
from kernel_testing import DEVICE, DTYPES, poisoned, randn
from packing_cases import bit_order_case

from bitdance_rt.kernels.token_packing import pack_signs, sign_quantize, unpack_signs
from bitdance_rt.reference.token_packing import pack_signs_ref, unpack_signs_ref

INT32_MIN = -2 ** 31


def random_signs(*shape, seed: int, dtype=torch.float32) -> torch.Tensor:
    """±1 tokens, each sign drawn independently."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 2, shape, generator=gen) * 2 - 1).to(device=DEVICE, dtype=dtype)


def random_words(*shape, seed: int) -> torch.Tensor:
    """int32 words over the whole range, negative ones (bit 31 set) included."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(INT32_MIN, 2 ** 31, shape, generator=gen, dtype=torch.int64).to(DEVICE, torch.int32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sign_equals_torch_sign_bitwise(dtype):
    """5 x 7 x 131 elements (crosses the 4096-element tile): ±normals, exact ±0.0, ±inf, the smallest subnormal and
    NaN; NaN gives 0 like torch.sign here; bit patterns compared (-0.0 must come out as +0.0)."""
    x = randn(5, 7, 131, seed=1, dtype=dtype)
    flat = x.view(-1)
    flat[::17] = 0.0
    flat[1::17] = -0.0
    flat[2] = float("inf")
    flat[3] = float("-inf")
    flat[4] = float("nan")
    flat[5] = torch.finfo(dtype).smallest_normal / 4
    flat[6] = -torch.finfo(dtype).smallest_normal / 4
    out = sign_quantize(x, out=poisoned(5, 7, 131, dtype=dtype))
    expected = torch.sign(x)
    assert expected[0, 0, 4].item() == 0.0  # torch.sign(NaN) on this build
    assert out.dtype == dtype and torch.equal(out.view(torch.int16 if dtype != torch.float32 else torch.int32),
                                              expected.view(torch.int16 if dtype != torch.float32 else torch.int32))


def test_sign_into_other_dtype_and_in_place():
    """float32 samples to float16 tokens (exact: ±1, 0), and in place."""
    x = randn(3, 64, 32, seed=2)
    x[0, 0, :5] = 0.0
    half = sign_quantize(x, out=poisoned(3, 64, 32, dtype=torch.float16))
    assert torch.equal(half, torch.sign(x).half())
    expected = torch.sign(x)
    assert sign_quantize(x, out=x).data_ptr() == x.data_ptr() and torch.equal(x, expected)


def test_pack_literal_bit_order():
    """The literal case of packing_cases.bit_order_case, through the kernels and the reference."""
    tokens, expected = bit_order_case(DEVICE)
    assert torch.equal(pack_signs(tokens, out=poisoned(6, 2, dtype=torch.int32)), expected)
    assert torch.equal(pack_signs_ref(tokens), expected)
    assert torch.equal(unpack_signs(expected, torch.float32, out=poisoned(6, 64)), tokens)
    assert torch.equal(unpack_signs_ref(expected, torch.float32), tokens)


def test_unpack_literal_word():
    """0x12345678: bits 3, 4, 5, 6, 9, 10, 12, 14, 18, 20, 21, 25, 28 set."""
    words = torch.tensor([0x12345678], dtype=torch.int32, device=DEVICE)
    plus = [3, 4, 5, 6, 9, 10, 12, 14, 18, 20, 21, 25, 28]
    expected = torch.tensor([1.0 if c in plus else -1.0 for c in range(32)], device=DEVICE)
    assert torch.equal(unpack_signs(words, torch.float32), expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pack_equals_reference_and_round_trips(dtype):
    """3 x 50 x 64 tokens = 300 words (three programs, the last partial): equal to the reference, and unpack(pack(t))
    is t exactly."""
    tokens = random_signs(3, 50, 64, seed=3, dtype=dtype)
    words = pack_signs(tokens, out=poisoned(3, 50, 2, dtype=torch.int32))
    assert torch.equal(words, pack_signs_ref(tokens))
    back = unpack_signs(words, dtype, out=poisoned(3, 50, 64, dtype=dtype))
    assert back.dtype == dtype and torch.equal(back, tokens)


def test_words_round_trip():
    """pack(unpack(w)) is w for random int32 words, negative ones included; float16 tokens too."""
    words = random_words(7, 33, seed=4)
    assert (words < 0).any()
    tokens = unpack_signs(words, torch.float32)
    assert torch.equal(tokens, unpack_signs_ref(words, torch.float32))
    assert torch.equal(pack_signs(tokens), words)
    assert torch.equal(pack_signs(unpack_signs(words, torch.float16)), words)


def test_zero_and_nan_tokens_pack_as_minus_one():
    """Only x > 0 sets a bit: 0, −0.0 and NaN unpack as −1 (a 0 token is not preserved by packing)."""
    tokens = random_signs(2, 32, seed=5)
    tokens[0, [3, 7, 11]] = torch.tensor([0.0, -0.0, float("nan")], device=DEVICE)
    back = unpack_signs(pack_signs(tokens), torch.float32)
    assert back[0, [3, 7, 11]].tolist() == [-1.0, -1.0, -1.0]
    kept = torch.ones_like(tokens, dtype=torch.bool)
    kept[0, [3, 7, 11]] = False
    assert torch.equal(back[kept], tokens[kept])


def test_empty_inputs():
    assert pack_signs(torch.empty(0, 32, device=DEVICE)).shape == (0, 1)
    assert unpack_signs(torch.empty(0, 2, dtype=torch.int32, device=DEVICE), torch.float32).shape == (0, 64)
    assert sign_quantize(torch.empty(0, device=DEVICE)).shape == (0,)


def test_argument_errors():
    tokens = random_signs(4, 48, seed=6)
    with pytest.raises(ValueError, match="pack_signs: tokens has 48 channels, expected a last dimension that is "
                                         "a multiple of 32"):
        pack_signs(tokens)
    with pytest.raises(ValueError, match="pack_signs_ref: tokens have 48 channels"):
        pack_signs_ref(tokens)
    with pytest.raises(ValueError, match="pack_signs: tokens has dtype torch.int32"):
        pack_signs(torch.ones(4, 32, dtype=torch.int32, device=DEVICE))
    with pytest.raises(ValueError, match=r"pack_signs: out has shape \[4, 2\], expected \[4, 1\]"):
        pack_signs(tokens[:, :32].contiguous(), out=torch.empty(4, 2, dtype=torch.int32, device=DEVICE))
    with pytest.raises(ValueError, match="pack_signs: out has dtype torch.int64"):
        pack_signs(tokens[:, :32].contiguous(), out=torch.empty(4, 1, dtype=torch.int64, device=DEVICE))
    with pytest.raises(ValueError, match="pack_signs: tokens must be contiguous"):
        pack_signs(random_signs(32, 4, seed=7).t())
    words = random_words(4, 2, seed=8)
    with pytest.raises(ValueError, match="unpack_signs: words has dtype torch.int64"):
        unpack_signs(words.long(), torch.float32)
    with pytest.raises(ValueError, match="unpack_signs: dtype is torch.int8"):
        unpack_signs(words, torch.int8)
    with pytest.raises(ValueError, match="unpack_signs: out has dtype torch.float16, expected torch.float32"):
        unpack_signs(words, torch.float32, out=torch.empty(4, 64, dtype=torch.float16, device=DEVICE))
    with pytest.raises(ValueError, match="sign_quantize: x has dtype torch.int32"):
        sign_quantize(torch.ones(3, dtype=torch.int32, device=DEVICE))
    with pytest.raises(ValueError, match=r"sign_quantize: out has shape \[4\], expected \[3\]"):
        sign_quantize(torch.ones(3, device=DEVICE), out=torch.empty(4, device=DEVICE))
