"""The CUDA-graph path's control flow, on the CPU: capture is replaced by a stand-in that runs the step on every
replay, so what is checked is the plumbing around the graphs — the warm-up's side effects undone (cache lengths),
static buffers refilled per request, the class-conditional step 0 (captured too, on the join's scratch rows)
replayed after each prefill, graphs reused by a later request. The engine runs the PyTorch operations (the plumbing
is the same whatever the providers). Real capture and replay on a GPU are not covered here (no GPU in CI)."""

from __future__ import annotations

import pytest
import torch

import bitdance_rt.engine.ar_step as ar_step
import bitdance_rt.engine.engine as engine_module
from bitdance_rt.runtime import Runtime
from bitdance_rt.ops import OpSet


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
    # the PyTorch operations read lengths on the host, so a real graph could not hold them; the stand-in capture
    # runs them again on every replay, which is all the plumbing needs (and far faster than Triton's interpreter)
    monkeypatch.setattr(OpSet, "capturable", lambda self, names: True)
    ReplayingCapture.made = 0


def _tokens(rt: Runtime, seed: int) -> torch.Tensor:
    """Tokens of two guided class-conditional requests served together (submit, then step until both end)."""
    handles = [rt.submit(class_label=label, num_sampling_steps=1, guidance_scale=3.0, seed=seed + i,
                         output_type="tokens") for i, label in enumerate((3, 7))]
    while not all(h.done for h in handles):
        rt.step()
    return torch.cat([h.result().tokens for h in handles])


def test_c2i_graph_path_matches_eager_and_reuses_graphs(c2i16_files, graph_path):
    model, tokenizer = c2i16_files

    def runtime(graphs: bool) -> Runtime:
        rt = Runtime.from_pretrained(model, tokenizer_path=tokenizer, device="cpu", dtype=torch.float32,
                                     backend="reference", max_batch=4)
        assert rt.runner.engine.use_cuda_graphs  # the patched capturable()
        rt.runner.engine.use_cuda_graphs = graphs
        return rt

    eager = _tokens(runtime(False), 11)
    assert ReplayingCapture.made == 0
    graphed_rt = runtime(True)
    first = _tokens(graphed_rt, 11)
    assert ReplayingCapture.made == 3  # the head loop, the decode step and the join's step 0
    assert torch.equal(first, eager)
    again = _tokens(graphed_rt, 12)
    assert ReplayingCapture.made == 3  # same batch: no new capture (step 0 replayed with the new seeds)
    assert (again != first).double().mean() > 0.2
    assert torch.equal(_tokens(graphed_rt, 11), eager)
