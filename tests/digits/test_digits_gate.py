"""The quality gate on the shipped digits model, on the labels, seeds, sampling steps and guidance its training run
recorded: the reference backend reaches the recorded accuracy; the engine with PyTorch operations
(``submit``/``step`` on the reference backend) stays within 2 points of the reference's accuracy; the Triton engine
makes the same images as the engine with PyTorch operations (both draw the keyed Philox noise), checked on one image
through the interpreter, and its own full gate stays within 2 points of the reference (on a GPU, or on the CPU with
BITDANCE_RT_SLOW_TESTS=1: the interpreter needs about half an hour for the 100 images).

The engine's noise differs from the reference's ``torch.Generator`` stream, so its images differ from the
reference's; their accuracy must not."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from bitdance_rt.quality.digits_gate import evaluate, generate_images

ENGINE_TOLERANCE = 0.02
RUN_FULL_TRITON_GATE = torch.cuda.is_available() or os.environ.get("BITDANCE_RT_SLOW_TESTS") == "1"


def gate(rt, record: dict, via: str, labels=None, seeds=None) -> dict:
    g = record["gate"]
    return evaluate(rt, g["labels"] if labels is None else labels, g["seeds"] if seeds is None else seeds,
                    num_sampling_steps=g["num_sampling_steps"], guidance_scale=g["guidance_scale"], via=via)


@pytest.fixture(scope="module")
def reference_figures(rt_digits, digits_record) -> dict:
    return gate(rt_digits, digits_record, "generate")


def test_reference_reaches_the_recorded_accuracy(reference_figures, digits_record):
    recorded = digits_record["gate"]
    assert reference_figures["num_images"] == len(recorded["labels"]) * len(recorded["seeds"])
    assert reference_figures["accuracy"] >= recorded["accuracy"] - 1e-9
    assert reference_figures["accuracy"] >= 0.9
    assert reference_figures["mean_confidence"] == pytest.approx(recorded["mean_confidence"], abs=0.02)
    # as close to the real digits' feature statistics as a few times the same count of real digits gets
    assert reference_figures["frechet_distance"] < 3 * recorded["real_frechet_distance"]


def test_engine_with_torch_ops_stays_within_two_points(rt_digits, digits_record, reference_figures):
    figures = gate(rt_digits, digits_record, "submit")
    assert figures["backend"] == "reference" and figures["via"] == "submit"
    assert figures["num_images"] == reference_figures["num_images"]
    assert abs(figures["accuracy"] - reference_figures["accuracy"]) <= ENGINE_TOLERANCE + 1e-9


def test_triton_engine_makes_the_torch_ops_engines_image(rt_digits, rt_digits_triton, digits_record):
    g = digits_record["gate"]
    args = {"num_sampling_steps": g["num_sampling_steps"], "guidance_scale": g["guidance_scale"]}
    labels, seeds = g["labels"][-1:], g["seeds"][-1:]
    triton = generate_images(rt_digits_triton, labels, seeds, via="generate", **args)
    torch_ops = generate_images(rt_digits, labels, seeds, via="submit", **args)
    assert triton.shape == torch_ops.shape == (1, 16, 16, 3)
    assert np.abs(triton.astype(np.int32) - torch_ops.astype(np.int32)).max() <= 2


@pytest.mark.skipif(not RUN_FULL_TRITON_GATE, reason="the full gate through Triton's interpreter takes about half an "
                    "hour on 2 CPU cores; set BITDANCE_RT_SLOW_TESTS=1 to run it (it runs by itself on a GPU)")
def test_triton_engine_full_gate_stays_within_two_points(rt_digits_triton, digits_record, reference_figures):
    figures = gate(rt_digits_triton, digits_record, "generate")
    assert figures["backend"] == "triton"
    assert abs(figures["accuracy"] - reference_figures["accuracy"]) <= ENGINE_TOLERANCE + 1e-9


@pytest.mark.parametrize("quantization", ["int8", "fp8"])
def test_quantized_weights_stay_within_two_points(quantization, digits_record, reference_figures):
    """8-bit weights (the reference backend's quantized math, the oracle of the quantized engine) on the same labels,
    seeds and settings: the accuracy stays within 2 points of the float reference's."""
    from bitdance_rt.digits import load_runtime

    rt = load_runtime(dtype=torch.float32, backend="reference", quantization=quantization)
    figures = gate(rt, digits_record, "generate")
    assert figures["num_images"] == reference_figures["num_images"]
    assert abs(figures["accuracy"] - reference_figures["accuracy"]) <= ENGINE_TOLERANCE + 1e-9, figures
