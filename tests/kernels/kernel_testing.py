"""Helpers every kernel test uses (Triton's interpreter on the CPU, set up by tests/conftest.py; the compiler on a GPU).

Fresh random inputs from a seeded generator (never zeros), outputs poisoned with NaN before the launch (so an
element the kernel never writes fails), a relative-error check against a float64 reference that fails on any NaN,
and the dtype matrix (bf16 only on a GPU: the interpreter mishandles bf16).
"""

import pytest
import torch

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda") if ON_GPU else torch.device("cpu")
FLOAT32_TOL = 1e-5   # float32 through the interpreter / GPU, relative to a float64 reference
BF16_TOL = 1e-2      # bf16 on a GPU, relative to a float64 reference

bf16_needs_gpu = pytest.mark.skipif(not ON_GPU, reason="bf16 kernels are tested on a GPU only: Triton's "
                                    "interpreter mishandles bf16 on the CPU (a bf16 tl.dot was seen off by 1e11)")
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16", marks=bf16_needs_gpu)]


def tolerance(dtype: torch.dtype) -> float:
    return BF16_TOL if dtype == torch.bfloat16 else FLOAT32_TOL


def randn(*shape, seed: int, dtype=torch.float32, scale: float = 1.0, device=DEVICE) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(device=device, dtype=dtype)


def poisoned(*shape, dtype=torch.float32, device=DEVICE) -> torch.Tensor:
    """An output buffer full of NaN (or the integer minimum): anything left unwritten fails the check."""
    if dtype.is_floating_point:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.full(shape, torch.iinfo(dtype).min, dtype=dtype, device=device)


def assert_close(out: torch.Tensor, ref: torch.Tensor, tol: float) -> None:
    """Relative error ``||out − ref|| / ||ref||`` below ``tol``; any NaN or inf in ``out`` fails."""
    out64, ref64 = out.detach().to("cpu", torch.float64), ref.detach().to("cpu", torch.float64)
    assert out64.shape == ref64.shape, (out64.shape, ref64.shape)
    assert torch.isfinite(out64).all(), f"{(~torch.isfinite(out64)).sum().item()} non-finite (unwritten?) elements"
    err = ((out64 - ref64).norm() / ref64.norm().clamp_min(1e-30)).item()
    assert err < tol, f"relative error {err:.3e} >= {tol:.0e}"
