"""Helpers of the quantization tests: the kernel tests' helpers (tests/kernels/kernel_testing.py: seeded inputs,
NaN-poisoned outputs, relative-error check failing on NaN), byte views and the e4m3 value table."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "kernels"))  # kernel_testing's helpers
from kernel_testing import DEVICE, FLOAT32_TOL, ON_GPU, assert_close, poisoned, randn  # noqa: E402,F401

FP8 = torch.float8_e4m3fn


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of an 8-bit tensor, on the CPU (comparing bytes also compares NaN codes and -0)."""
    return t.detach().cpu().contiguous().view(torch.uint8)


def e4m3_values() -> torch.Tensor:
    """Every finite e4m3fn value (254 of them: bytes 0x00..0x7E and 0x80..0xFE) in float64, ascending."""
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    values = codes.view(FP8).double()
    return torch.sort(values[torch.isfinite(values)]).values.unique()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = a.detach().cpu().double(), b.detach().cpu().double()
    return ((a64 - b64).norm() / b64.norm().clamp_min(1e-30)).item()
