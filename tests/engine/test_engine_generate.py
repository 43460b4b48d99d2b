"""The whole engine path through ``Runtime.generate(backend="triton")`` on the tiny models (CPU: Triton's
interpreter, no CUDA graphs): tokens, determinism, per-request noise, and closeness to the reference backend."""

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
                              output_type="np", callback=lambda k, n: steps.append((k, n)))
    assert out.tokens.shape == (2, 256, 32) and set(out.tokens.unique().tolist()) <= {-1, 0, 1}
    assert out.images.shape == (2, 256, 256, 3) and steps[-1] == (16, 16)
    again = c2i_engine.generate(class_labels=[3, 7], num_sampling_steps=1, guidance_scale=3.0, seed=5,
                                output_type="tokens")
    assert torch.equal(again.tokens, out.tokens)
    # per-request noise: the first image does not depend on what shares its batch
    alone = c2i_engine.generate(class_labels=[3], num_sampling_steps=1, guidance_scale=3.0, seed=5,
                                output_type="tokens")
    assert (alone.tokens[0] == out.tokens[0]).double().mean() >= 0.999
    other = c2i_engine.generate(class_labels=[3, 7], num_sampling_steps=1, guidance_scale=3.0, seed=6,
                                output_type="tokens")
    assert (other.tokens != out.tokens).double().mean() > 0.2


def test_t2i_engine_generates(t2i_engine):
    out = t2i_engine.generate(["a fox", "a long prompt about two cats"], height=512, width=512,
                              num_sampling_steps=1, guidance_scale=5.0, seed=0, output_type="tokens")
    assert out.tokens.shape == (2, 1024, 32)
    values = out.tokens.float()
    assert (values > 0).float().mean() > 0.05 and (values < 0).float().mean() > 0.05
    alone = t2i_engine.generate("a fox", height=512, width=512, num_sampling_steps=1, guidance_scale=5.0, seed=0,
                                output_type="tokens")
    assert (alone.tokens[0] == out.tokens[0]).double().mean() >= 0.999
