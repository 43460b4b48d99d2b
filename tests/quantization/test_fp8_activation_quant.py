"""``kernels.fp8_activation_quant`` (Triton; the interpreter on the CPU) against ``fp8_activation_quant_reference``,
bit for bit: codes compared as bytes, scales with ``torch.equal``.

Cases: per token and per 1×128 group; float32 and float16 inputs (bf16 on a GPU only: the interpreter mishandles
bf16), fresh seeded rows of different magnitudes, widths that leave a partial 128-group and a partial 1,024-column
pass step, rows strided inside a wider tensor, several rows per program with a partial last one. A sweep row holds every finite e4m3
value, every midpoint between neighbours (ties), the float32 neighbours of each midpoint, subnormal steps and -0.0
with the row's scale exactly 1, so the kernel's integer rounding is checked against ``tensor.to(float8_e4m3fn)`` on
every rounding case. Quotients rounding above 448 saturate to ±448; zero rows get the floor scale and zero codes.
Outputs (codes and scales) are poisoned with NaN before each launch.
"""

from __future__ import annotations

import pytest
import torch

import bitdance_rt.kernels._tiles as _tiles
from quant_testing import DEVICE, FP8, ON_GPU, as_bytes, e4m3_values, poisoned, randn

import bitdance_rt.kernels.fp8_activation_quant as fp8_activation_quant_module
from bitdance_rt.kernels.fp8_activation_quant import fp8_activation_quant
from bitdance_rt.quantization.formats import FP8_MAX, SCALE_FLOOR
from bitdance_rt.quantization.reference_linear import fp8_activation_quant_reference

GROUPS = [pytest.param(None, id="token"), pytest.param(128, id="group128")]
X_DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16"),
            pytest.param(torch.bfloat16, id="bf16", marks=pytest.mark.skipif(
                not ON_GPU, reason="bf16 kernels are tested on a GPU only: Triton's interpreter mishandles bf16"))]


def poisoned_outputs(m: int, k: int, group_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    codes = torch.full((m, k), 0x7F, dtype=torch.uint8, device=DEVICE).view(FP8)  # 0x7F is e4m3's NaN
    scales = poisoned(*((m,) if group_size is None else (m, -(-k // 128))))
    return codes, scales


def check_against_reference(x: torch.Tensor, group_size: int | None) -> None:
    m, k = x.shape
    codes, scales = poisoned_outputs(m, k, group_size)
    got_codes, got_scales = fp8_activation_quant(x, group_size, codes=codes, scales=scales)
    assert got_codes is codes and got_scales is scales
    ref_codes, ref_scales = fp8_activation_quant_reference(x.cpu(), group_size)
    assert torch.equal(as_bytes(codes), as_bytes(ref_codes)), \
        f"{(as_bytes(codes) != as_bytes(ref_codes)).sum().item()} codes differ"
    assert torch.equal(scales.cpu(), ref_scales)


@pytest.mark.parametrize("tiles", ["gpu", "interpreter"])
@pytest.mark.parametrize("dtype", X_DTYPES)
@pytest.mark.parametrize("group_size", GROUPS)
@pytest.mark.parametrize("m,k", [(1, 96), (7, 1300), (37, 300)])
def test_random_rows(m, k, group_size, dtype, tiles, monkeypatch):
    """Both tile rules: the GPU's (1 row per program per token, 16 per group; 4 per token above ONE_ROW_UP_TO rows)
    and the interpreter's (64 rows per program: one partial program)."""
    monkeypatch.setattr(_tiles, "interpreter_tiles", lambda: tiles == "interpreter")
    if (m, k) == (37, 300):  # several rows per program (as above ONE_ROW_UP_TO rows), a partial last program
        monkeypatch.setattr(fp8_activation_quant_module, "ONE_ROW_UP_TO", 8)
    x = randn(m, k, seed=m * k, scale=3.0) * torch.logspace(-3, 2, m, device=DEVICE)[:, None]
    check_against_reference(x.to(dtype), group_size)


@pytest.mark.parametrize("group_size", GROUPS)
def test_strided_rows(group_size):
    wide = randn(9, 700, seed=11)
    x = wide[:, 100:600]  # rows strided by 700, channels contiguous
    check_against_reference(x, group_size)
    codes_wide = torch.zeros(9, 800, dtype=torch.uint8, device=DEVICE).view(FP8)
    codes, _ = fp8_activation_quant(x, group_size, codes=codes_wide[:, :500])
    assert torch.equal(as_bytes(codes), as_bytes(fp8_activation_quant_reference(x.cpu(), group_size)[0]))
    assert (as_bytes(codes_wide)[:, 500:] == 0).all()


def sweep_row() -> torch.Tensor:
    """Every rounding case of e4m3 at scale 1: each finite value, each midpoint and its float32 neighbours."""
    values = e4m3_values()
    values = values[values >= 0]
    mids = (values[:-1] + values[1:]) / 2
    mids32 = mids.to(torch.float32)
    up = torch.nextafter(mids32, torch.full_like(mids32, float("inf")))
    down = torch.nextafter(mids32, torch.zeros_like(mids32))
    tiny = torch.tensor([2 ** -10, 2 ** -11, 2 ** -12, 3 * 2 ** -11, 1e-30, 0.0])
    positive = torch.cat([values.float(), mids32, up, down, tiny])
    row = torch.cat([positive, -positive, torch.tensor([-0.0])])
    return row


@pytest.mark.parametrize("group_size", GROUPS)
def test_every_rounding_case(group_size):
    row = sweep_row()
    if group_size is not None:  # put 448 at the start of every 128-group so every group's scale is exactly 1
        chunks = [torch.cat([torch.tensor([FP8_MAX]), c]) for c in row.split(127)]
        row = torch.cat(chunks)
    x = torch.stack([row, row.flip(0)]).to(DEVICE)
    codes, scales = fp8_activation_quant(x, group_size)
    assert (scales == 1.0).all()
    expected = x.cpu().to(FP8)  # torch's own rounding: nearest, ties to even
    assert torch.equal(as_bytes(codes), as_bytes(expected)), \
        f"{(as_bytes(codes) != as_bytes(expected)).sum().item()} of {x.numel()} codes differ from torch's cast"
    check_against_reference(x, group_size)


@pytest.mark.parametrize("group_size", GROUPS)
def test_saturation_and_zero_rows(group_size):
    candidates = torch.linspace(1.0, 2.0, 20001, dtype=torch.float32)
    over = candidates[(candidates / (candidates / FP8_MAX)) > FP8_MAX][:4]
    assert over.numel() == 4
    x = torch.zeros(6, 256)
    x[:4, 0] = over
    x[:4, 1] = -over
    x[:4, 128] = over  # the second group of each row has the same amax
    x[:4, 2:128] = 0.25 * randn(4, 126, seed=12, device="cpu").clamp(-3, 3)
    x[4] = 0.0
    x[5, 7] = 1e-25  # amax below 448 * floor: the floor scale
    x = x.to(DEVICE)
    codes, scales = fp8_activation_quant(x, group_size)
    check_against_reference(x, group_size)
    raw = as_bytes(codes)
    assert (raw[:4, 0] == 0x7E).all() and (raw[:4, 1] == 0xFE).all() and (raw[:4, 128] == 0x7E).all()
    assert not ((raw == 0x7F) | (raw == 0xFF)).any(), "a code saturated to NaN"
    assert (raw[4] == 0).all() and (scales[4] == SCALE_FLOOR).all()
    assert torch.isfinite(scales).all() and (scales > 0).all()


def test_argument_errors():
    x = randn(4, 256, seed=13)
    with pytest.raises(ValueError, match="group_size must be None .* or 128, found 64"):
        fp8_activation_quant(x, 64)
    with pytest.raises(ValueError, match="x has dtype torch.int32"):
        fp8_activation_quant(x.int())
    with pytest.raises(ValueError, match=r"codes has shape \[4, 255\]"):
        fp8_activation_quant(x, codes=torch.empty(4, 255, dtype=FP8, device=DEVICE))
    with pytest.raises(ValueError, match=r"scales has shape \[4\], expected \[4, 2\]"):
        fp8_activation_quant(x, 128, scales=torch.empty(4, device=DEVICE))
    with pytest.raises(ValueError, match="x has channel stride 256"):
        fp8_activation_quant(x.t())


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # NumPy, inside the interpreter
@pytest.mark.parametrize("group_size", GROUPS)
def test_nan_and_inf(group_size):
    """A NaN gives its token (or group) a NaN scale and NaN codes, as the reference; an Inf an Inf scale. The other
    rows and groups are untouched (bit for bit the reference)."""
    x = randn(4, 300, seed=14)
    x[1, 200] = float("nan")
    x[2, 5] = float("inf")
    codes, scales = fp8_activation_quant(x, group_size)
    ref_codes, ref_scales = fp8_activation_quant_reference(x.cpu(), group_size)
    nan_part = (1, 1) if group_size else (1,)  # row 1 (its group 1 when grouped)
    inf_part = (2, 0) if group_size else (2,)
    assert torch.isnan(scales[nan_part]) and torch.isnan(ref_scales[nan_part])
    assert torch.isinf(scales[inf_part]) and torch.isinf(ref_scales[inf_part])
    nan_cols = slice(128, 256) if group_size else slice(None)
    assert (as_bytes(codes)[1, nan_cols] & 0x7F == 0x7F).all()
    keep = torch.ones(4, dtype=torch.bool)
    keep[1:3] = False
    assert torch.equal(as_bytes(codes)[keep], as_bytes(ref_codes)[keep])
    assert torch.equal(scales.cpu()[keep], ref_scales[keep])
