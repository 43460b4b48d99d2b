"""The quantized engine against the quantized reference, teacher-forced through the production AR step (the model
runner's ``join`` and ``step``), with the helpers of ``test_engine_parity.py``: both sides load the tiny models with
the same 8-bit weights (``quantization="int8"``: weight-only; ``"fp8"``: e4m3 weights, activations quantized per
token), the reference running ``quantized_linear_reference`` inside its modules and the engine the dispatcher's
``quantized_linear`` (Triton kernels through the interpreter, or the PyTorch provider). Same tolerances as the float
engine: hidden states within 1e-4 relative, sampled tokens agreeing in >= 99.9 % of bits.

Two AR steps each (the Triton interpreter is slow): the prefill, the class-conditional unguided step, and guided
steps through the head's fused loop.
"""

from __future__ import annotations

import pytest

from test_engine_parity import c2i_teacher_forced, t2i_teacher_forced

QUANTIZATIONS = ["int8", "fp8"]
PROVIDERS = ["triton", "torch"]
AR_STEPS = 2


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_quantized_t2i_teacher_forced(t2i64_dir, provider, quantization, monkeypatch):
    t2i_teacher_forced(t2i64_dir, provider, monkeypatch, quantization=quantization, ar_steps=AR_STEPS)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_quantized_c2i_teacher_forced(c2i16_files, provider, quantization, monkeypatch):
    c2i_teacher_forced(c2i16_files, provider, monkeypatch, quantization=quantization, ar_steps=AR_STEPS)
