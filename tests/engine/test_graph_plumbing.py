"""The CUDA-graph path's control flow, on the CPU: capture is replaced by a stand-in that runs the step on every
replay, so what is checked is the plumbing around the graphs — the warm-up's side effects undone (cache lengths),
static buffers refilled per request, the class-conditional step 0 (captured too, on the join's scratch rows)
replayed after each prefill, graphs reused by a later request. Real capture and replay on a GPU are not covered here (no GPU in CI)."""

from __future__ import annotations

import pytest
import torch

import bitdance_rt.engine.ar_step as ar_step
import bitdance_rt.engine.engine as engine_module
from bitdance_rt.runtime import Runtime
from engine_testing import placement


class ReplayingCapture:
    """Stands in for ``CapturedStep``: warm-up run, ``restore``, then each ``replay`` runs ``fn`` again."""
    made = 0

    def __init__(self, fn, restore=None):
        ReplayingCapture.made += 1
        self.fn = fn
        self.output = fn()
        if restore is not None:
            restore()

    def replay(self):
        self.output = self.fn()
        return self.output


@pytest.fixture
def graph_path(monkeypatch):
    monkeypatch.setattr(ar_step, "CapturedStep", ReplayingCapture)
    monkeypatch.setattr(engine_module, "graphs_available", lambda device: True)
    ReplayingCapture.made = 0


def test_c2i_graph_path_matches_eager_and_reuses_graphs(c2i16_files, graph_path):
    model, tokenizer = c2i16_files
    args = dict(class_labels=[3, 7], num_sampling_steps=1, guidance_scale=3.0, seed=11, output_type="tokens")
    eager_rt = Runtime.from_pretrained(model, tokenizer_path=tokenizer, **placement("triton"))
    eager_rt.engine.use_cuda_graphs = False
    eager = eager_rt.generate(**args).tokens
    graphed_rt = Runtime.from_pretrained(model, tokenizer_path=tokenizer, **placement("triton"))
    first = graphed_rt.generate(**args).tokens
    assert ReplayingCapture.made == 3  # the head loop, the decode step and the join's step 0
    assert torch.equal(first, eager)
    again = graphed_rt.generate(**{**args, "seed": 12}).tokens
    assert ReplayingCapture.made == 3  # same bucket: no new capture (step 0 replayed with the new seeds)
    assert (again != first).double().mean() > 0.2
    assert torch.equal(graphed_rt.generate(**args).tokens, eager)
