"""The whole engine path through ``Runtime.generate(backend="triton")`` on the tiny models (CPU: Triton's
interpreter, no CUDA graphs): tokens and images of both families, determinism. Each full run costs minutes in the
interpreter, so what other tests check on faster paths is not repeated here (see the notes in the tests)."""

from __future__ import annotations

import pytest
import torch

from bitdance_rt.runtime import Runtime
from engine_testing import placement


@pytest.fixture(scope="module")
def c2i_engine(c2i16_files):
    model, tokenizer = c2i16_files
    return Runtime.from_pretrained(model, tokenizer_path=tokenizer, **placement("triton"))


@pytest.fixture(scope="module")
def t2i_engine(t2i64_dir):
    return Runtime.from_pretrained(t2i64_dir, **placement("triton"))


def test_backend_is_reported(c2i_engine, rt_c2i16):
    assert c2i_engine.describe()["backend"] == "triton"
    assert rt_c2i16.describe()["backend"] == "reference"  # "auto" on the CPU


def test_c2i_engine_generates_and_is_deterministic(c2i_engine):
    steps = []
    out = c2i_engine.generate(class_labels=[3, 7], num_sampling_steps=1, guidance_scale=3.0, seed=5,
                              output_type="tokens", callback=lambda k, n: steps.append((k, n)))
    assert out.tokens.shape == (2, 256, 32) and set(out.tokens.unique().tolist()) <= {-1, 0, 1}
    assert steps[-1] == (16, 16)
    # images through the kernels' decoder on this backend: tests/engine/test_token_decoder_engine.py
    assert (out.tokens[0] != out.tokens[1]).double().mean() > 0.2  # each image has its own class and noise
    again = c2i_engine.generate(class_labels=[3, 7], num_sampling_steps=1, guidance_scale=3.0, seed=5,
                                output_type="tokens")
    assert torch.equal(again.tokens, out.tokens)
    # a request's image alone equals it in a crowd: tests/batching/test_crowd.py (the same engine, PyTorch
    # operations; every Triton kernel here runs fixed shapes whatever shares the batch)


def test_t2i_engine_generates(t2i_engine):
    out = t2i_engine.generate(["a fox", "a long prompt about two cats"], height=512, width=512,
                              num_sampling_steps=1, guidance_scale=5.0, seed=0, output_type="tokens")
    assert out.tokens.shape == (2, 1024, 32)
    values = out.tokens.float()
    assert (values > 0).float().mean() > 0.05 and (values < 0).float().mean() > 0.05
    assert (out.tokens[0] != out.tokens[1]).double().mean() > 0.2
    # alone equals in a crowd: tests/batching/test_crowd.py; step-by-step agreement with the reference:
    # tests/engine/test_engine_parity.py
