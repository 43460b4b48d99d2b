"""The CUDA extension's ``pack_signs``, ``unpack_signs`` and ``bit_linear`` (``bitdance_rt.cuda_ops.token_packing``)
against the PyTorch references and the Triton kernels of the same operations (CUDA device only).

Packing is exact: words and tokens must equal the reference and Triton bit for bit (as in
tests/kernels/test_token_packing.py), on 16-byte-aligned tensors (vector path) and on tensors one element off
(scalar path), across the grid-stride wrap. ``bit_linear``: relative error ``||out − ref|| / ||ref||`` against the
float64 ``bit_linear_ref`` below 1e-5 in float32 and 1e-2 in bfloat16 / float16 (the kernel tests' tolerances),
and the same bound against Triton's ``unpack_signs`` + ``F.linear`` in the weight's dtype. Outputs are
NaN-poisoned (or INT32_MIN) before every launch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "kernels"))  # kernel_testing's helpers
from kernel_testing import assert_close, poisoned  # noqa: E402
from packing_cases import bit_order_case  # noqa: E402

from bitdance_rt.cuda_ops import token_packing as cuda_packing  # noqa: E402
from bitdance_rt.kernels import token_packing as triton_packing  # noqa: E402
from bitdance_rt.reference.token_packing import bit_linear_ref, pack_signs_ref, unpack_signs_ref  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA kernels need a CUDA device")

DEVICE = torch.device("cuda")
INT32_MIN = -2 ** 31
FLOAT32_TOL = 1e-5
HALF_TOL = 1e-2  # bfloat16 and float16
T2I_CHANNELS = 32  # bench/shapes.py T2I_14B["token_channels"]
T2I_HIDDEN = 5120
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16"),
          pytest.param(torch.float16, id="fp16")]


def tolerance(dtype: torch.dtype) -> float:
    return FLOAT32_TOL if dtype == torch.float32 else HALF_TOL


def random_signs(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 2, shape, generator=gen) * 2 - 1).to(device=DEVICE, dtype=dtype)


def random_words(*shape: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(INT32_MIN, 2 ** 31, shape, generator=gen, dtype=torch.int64).to(DEVICE, torch.int32)


def randn(*shape: int, seed: int, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(DEVICE, dtype)


def misaligned(*shape: int, dtype: torch.dtype, fill: float | int) -> torch.Tensor:
    """A contiguous tensor whose data starts one element past a 16-byte boundary (the kernels' scalar path)."""
    numel = 1
    for s in shape:
        numel *= s
    storage = torch.full((numel + 1,), fill, dtype=dtype, device=DEVICE)
    view = storage[1:].view(shape)
    assert view.is_contiguous() and view.data_ptr() % 16 != 0
    return view


# ---------------------------------------------------------------- pack / unpack

def test_literal_bit_order():
    """The literal case of packing_cases.bit_order_case through the CUDA operators."""
    tokens, expected = bit_order_case(DEVICE)
    assert torch.equal(cuda_packing.pack_signs(tokens, out=poisoned(6, 2, dtype=torch.int32, device=DEVICE)),
                       expected)
    assert torch.equal(cuda_packing.unpack_signs(expected, torch.float32, out=poisoned(6, 64, device=DEVICE)), tokens)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("aligned", [True, False], ids=["vector", "scalar"])
def test_pack_equals_reference_and_triton(dtype, aligned):
    """3 x 50 x 96 tokens (450 words); a few 0, -0.0, NaN and ±inf tokens (only +inf sets a bit)."""
    tokens = random_signs(3, 50, 96, seed=1, dtype=dtype)
    flat = tokens.view(-1)
    flat[[5, 70, 200, 333, 901]] = torch.tensor([0.0, -0.0, float("nan"), float("inf"), float("-inf")],
                                                dtype=dtype, device=DEVICE)
    if not aligned:
        shifted = misaligned(3, 50, 96, dtype=dtype, fill=0.0)
        shifted.copy_(tokens)
        tokens = shifted
    words = cuda_packing.pack_signs(tokens, out=poisoned(3, 50, 3, dtype=torch.int32, device=DEVICE))
    assert torch.equal(words, pack_signs_ref(tokens))
    assert torch.equal(words, triton_packing.pack_signs(tokens))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("aligned", [True, False], ids=["vector", "scalar"])
def test_unpack_equals_reference_and_triton(dtype, aligned):
    words = random_words(7, 33, 2, seed=2)
    assert (words < 0).any()
    out = poisoned(7, 33, 64, dtype=dtype, device=DEVICE) if aligned else misaligned(7, 33, 64, dtype=dtype,
                                                                                    fill=float("nan"))
    tokens = cuda_packing.unpack_signs(words, dtype, out=out)
    assert tokens is out and tokens.dtype == dtype
    assert torch.equal(tokens, unpack_signs_ref(words, dtype))
    assert torch.equal(tokens, triton_packing.unpack_signs(words, dtype))
    assert torch.equal(cuda_packing.pack_signs(tokens), words)


def test_round_trips_across_the_grid_stride_wrap():
    """2^18 + 77 words: more 8-channel groups than the capped grid has threads, so threads loop."""
    words = random_words(2 ** 18 + 77, 1, seed=3)
    tokens = cuda_packing.unpack_signs(words, torch.bfloat16)
    assert torch.equal(tokens, unpack_signs_ref(words, torch.bfloat16))
    assert torch.equal(cuda_packing.pack_signs(tokens, out=poisoned(*words.shape, dtype=torch.int32,
                                                                     device=DEVICE)), words)


def test_fresh_outputs_and_empty_inputs():
    words = random_words(4, 5, 1, seed=4)
    tokens = cuda_packing.unpack_signs(words, torch.float16)
    assert tokens.shape == (4, 5, 32) and tokens.dtype == torch.float16
    assert torch.equal(cuda_packing.pack_signs(tokens), words)
    assert cuda_packing.pack_signs(torch.empty(0, 32, device=DEVICE)).shape == (0, 1)
    assert cuda_packing.unpack_signs(torch.empty(0, 2, dtype=torch.int32, device=DEVICE),
                                     torch.float32).shape == (0, 64)


# ---------------------------------------------------------------- bit_linear

def check_bit_linear(rows: tuple[int, ...], channels: int, outputs: int, dtype: torch.dtype, with_bias: bool,
                     seed: int) -> None:
    tokens = random_signs(*rows, channels, seed=seed, dtype=dtype)
    words = pack_signs_ref(tokens)
    weight = randn(outputs, channels, seed=seed + 1, dtype=dtype, scale=channels ** -0.5)
    bias = randn(outputs, seed=seed + 2, dtype=dtype, scale=0.1) if with_bias else None
    out = cuda_packing.bit_linear(words, weight, bias, out=poisoned(*rows, outputs, dtype=dtype, device=DEVICE))
    assert out.shape == (*rows, outputs) and out.dtype == dtype
    exact = bit_linear_ref(words, weight.double(), None if bias is None else bias.double())
    assert_close(out, exact, tolerance(dtype))
    triton_tokens = triton_packing.unpack_signs(words, dtype)
    assert_close(out, F.linear(triton_tokens, weight, bias), tolerance(dtype))
    if dtype == torch.float32:  # the float32 reference takes the same float32 products: near-exact
        assert_close(out, bit_linear_ref(words, weight, bias), FLOAT32_TOL)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [(2, 64), (2, 16), (32, 64)], ids=["2x64", "2x16", "32x64"])
def test_bit_linear_released_shapes(rows, dtype):
    """The T2I projector's fc1 (C = 32 -> 5120) on P tokens of 2 guidance rows, and a large batch."""
    check_bit_linear(rows, T2I_CHANNELS, T2I_HIDDEN, dtype, with_bias=True, seed=10 + rows[0])


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("rows,channels,outputs", [((37,), 96, 300), ((3, 5), 64, 129), ((1,), 32, 1),
                                                   ((17,), 256, 128), ((2100,), 64, 200)])
def test_bit_linear_ragged_tiles(rows, channels, outputs, with_bias):
    """Rows and outputs that leave the 16 x 128 tiles (64 x 128 from 2,048 rows on) partly masked; several words
    per row."""
    check_bit_linear(rows, channels, outputs, torch.float32, with_bias, seed=20 + channels)


def test_bit_linear_fresh_output_and_no_channels():
    words = random_words(6, 1, seed=30)
    weight = randn(200, 32, seed=31)
    out = cuda_packing.bit_linear(words, weight)
    assert out.shape == (6, 200) and out.is_contiguous()
    assert_close(out, bit_linear_ref(words, weight.double()), FLOAT32_TOL)
    empty_words = torch.empty(3, 0, dtype=torch.int32, device=DEVICE)  # C = 0: out = bias
    bias = randn(5, seed=32)
    out = cuda_packing.bit_linear(empty_words, torch.empty(5, 0, device=DEVICE), bias,
                                  out=poisoned(3, 5, device=DEVICE))
    assert torch.equal(out, bias.expand(3, 5))


# ---------------------------------------------------------------- argument errors

def test_launcher_argument_errors():
    tokens = random_signs(4, 48, seed=40)
    with pytest.raises(ValueError, match="pack_signs: tokens has 48 channels, expected a last dimension"):
        cuda_packing.pack_signs(tokens)
    with pytest.raises(ValueError, match=r"pack_signs: out has shape \[4, 2\], expected \[4, 1\]"):
        cuda_packing.pack_signs(tokens[:, :32].contiguous(), out=torch.empty(4, 2, dtype=torch.int32, device=DEVICE))
    with pytest.raises(ValueError, match="pack_signs: tokens must be contiguous"):
        cuda_packing.pack_signs(random_signs(32, 4, seed=41).t())
    words = random_words(4, 2, seed=42)
    with pytest.raises(ValueError, match="unpack_signs: dtype is torch.int8"):
        cuda_packing.unpack_signs(words, torch.int8)
    with pytest.raises(ValueError, match="unpack_signs: out has dtype torch.float16, expected torch.float32"):
        cuda_packing.unpack_signs(words, torch.float32, out=torch.empty(4, 64, dtype=torch.float16, device=DEVICE))
    weight = randn(8, 64, seed=43)
    with pytest.raises(ValueError, match=r"bit_linear: weight has shape \[8, 32\], expected \[\*, 64\]"):
        cuda_packing.bit_linear(words, weight[:, :32].contiguous())
    with pytest.raises(ValueError, match="bit_linear: bias has dtype torch.bfloat16, expected torch.float32"):
        cuda_packing.bit_linear(words, weight, randn(8, seed=44, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match=r"bit_linear: out has shape \[4, 9\], expected \[4, 8\]"):
        cuda_packing.bit_linear(words, weight, out=torch.empty(4, 9, device=DEVICE))
    with pytest.raises(ValueError, match="bit_linear: weight is on cpu"):
        cuda_packing.bit_linear(words, weight.cpu())


def test_operator_checks():
    """The C++ checks behind the launchers (called directly, past the Python checks) raise instead of launching."""
    ops = torch.ops.bitdance_rt
    cuda_packing.pack_signs(random_signs(1, 32, seed=50))  # loads the extension
    words = random_words(4, 2, seed=51)
    with pytest.raises(RuntimeError, match=r"pack_signs: tokens \[4, 48\] and words \[4, 1\] do not match"):
        ops.pack_signs(random_signs(4, 48, seed=52), torch.empty(4, 1, dtype=torch.int32, device=DEVICE))
    with pytest.raises(RuntimeError, match="unpack_signs: tokens has dtype Long"):
        ops.unpack_signs(words, torch.empty(4, 64, dtype=torch.int64, device=DEVICE))
    with pytest.raises(RuntimeError, match=r"bit_linear: weight has shape \[8, 32\], expected \[H, 64\]"):
        ops.bit_linear(words, randn(8, 32, seed=53), None, torch.empty(4, 8, device=DEVICE))
    with pytest.raises(RuntimeError, match="bit_linear: words is on cpu"):
        ops.bit_linear(words.cpu(), randn(8, 64, seed=54), None, torch.empty(4, 8, device=DEVICE))
