"""The quantized AR step captured into CUDA graphs (GPU only; skipped on the CPU): for int8 (any GPU) and fp8
(compute capability >= 8.9), the class-conditional tiny model's ``generate`` on the graphed engine equals the same
engine run eagerly, bit for bit, the quantized GEMMs (Triton kernels) being inside the captured head loop and
decode step, and a later request replays the same graphs."""

from __future__ import annotations

import pytest
import torch

import bitdance_rt.engine.ar_step as ar_step
from bitdance_rt.quantization import QuantizedWeight
from bitdance_rt.runtime import Runtime

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def _formats() -> list[str]:
    if not torch.cuda.is_available():
        return ["int8", "fp8"]
    return ["int8"] + (["fp8"] if torch.cuda.get_device_capability() >= (8, 9) else [])


@pytest.mark.parametrize("quantization", _formats())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantized_step_captured_equals_eager(c2i16_files, quantization, dtype, monkeypatch):
    model, tokenizer = c2i16_files
    made = []
    captured = ar_step.CapturedStep

    def counting(*a, **k):
        made.append(1)
        return captured(*a, **k)
    monkeypatch.setattr(ar_step, "CapturedStep", counting)
    args = dict(class_labels=[3, 7], num_sampling_steps=2, guidance_scale=3.0, seed=11, output_type="tokens")
    load = dict(tokenizer_path=tokenizer, device="cuda", dtype=dtype, backend="triton", quantization=quantization)
    eager_rt = Runtime.from_pretrained(model, **load)
    eager_rt.engine.use_cuda_graphs = False
    eager = eager_rt.generate(**args).tokens
    graphed_rt = Runtime.from_pretrained(model, **load)
    assert graphed_rt.engine.use_cuda_graphs
    assert isinstance(graphed_rt.engine.layout.layers[0].qkv, QuantizedWeight)
    first = graphed_rt.generate(**args).tokens
    assert len(made) == 2  # the head loop and the decode step
    assert torch.equal(first, eager)
    assert torch.equal(graphed_rt.generate(**args).tokens, eager)
    assert len(made) == 2  # replayed, not captured again
