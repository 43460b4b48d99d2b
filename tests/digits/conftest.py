"""Fixtures of the shipped digits model (``bitdance_rt/assets/digits``): its training record and its runtimes in
float32 (the reference backend on the CPU; the Triton engine on the GPU when there is one, else on the CPU through
Triton's interpreter, which tests/conftest.py switches on)."""

from __future__ import annotations

import pytest
import torch

from bitdance_rt.digits.assets import load_record, load_runtime

ENGINE_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="session")
def digits_record() -> dict:
    return load_record()


@pytest.fixture(scope="session")
def rt_digits():
    return load_runtime(device="cpu", dtype=torch.float32, backend="reference")


@pytest.fixture(scope="session")
def rt_digits_triton():
    return load_runtime(device=ENGINE_DEVICE, dtype=torch.float32, backend="triton")
