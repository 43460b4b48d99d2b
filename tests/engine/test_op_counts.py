"""Device work per scheduler round does not grow with the number of requests (issue 13).

Every aten operation dispatched during a round is counted (``OpCounter``, a ``TorchDispatchMode``), views excepted
(they launch nothing); runtimes run the engine with the PyTorch operations on the CPU (``backend="reference"``),
whose op count per round is what a GPU would launch outside the CUDA graphs. Checked: an AR round of 1 and of 64
active requests; the round that joins 1 and 16 requests (prefill and the class-conditional step 0 in one
fixed-shape pass); the round in which 1 and 16 requests finish and are decoded; a whole job of 1 and of 16.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bitdance_rt import Runtime


class OpCounter(TorchDispatchMode):
    """Counts dispatched aten operations by name, views excepted."""

    def __init__(self):
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())


def counted(fn) -> OpCounter:
    with OpCounter() as counter:
        fn()
    return counter


def _c2i(files, max_batch: int, batch_invariant: bool = True) -> Runtime:
    model, tokenizer = files
    return Runtime.from_pretrained(model, tokenizer_path=tokenizer, device="cpu", dtype=torch.float32,
                                   max_batch=max_batch, batch_invariant=batch_invariant)


def _submit(rt: Runtime, n: int, output_type: str = "tokens") -> list:
    return [rt.submit(class_label=i % 10, guidance_scale=3.0, seed=i, num_sampling_steps=1,
                      output_type=output_type) for i in range(n)]


def _rounds(files, n: int, output_type: str = "tokens") -> list[OpCounter]:
    """Op counts of every round of a job of ``n`` guided class-conditional requests submitted together, in a
    batch of 64 slots."""
    rt = _c2i(files, max_batch=128)
    handles = _submit(rt, n, output_type)
    rounds = []
    while not all(h.done for h in handles):
        rounds.append(counted(rt.step))
    assert all(h.status == "done" for h in handles)
    return rounds


def test_an_ar_round_costs_the_same_for_1_and_64_requests(c2i16_files, single_thread):
    counts = {}
    for n in (1, 64):
        rt = _c2i(c2i16_files, max_batch=128)
        _submit(rt, n)
        rt.step()  # joins them
        counts[n] = counted(rt.step)  # an AR round: nobody joins or leaves
    assert counts[1].total > 0 and counts[1].ops == counts[64].ops, (counts[1].total, counts[64].total)


def test_joining_and_finishing_rounds_do_not_grow_with_the_requests(c2i16_files, single_thread):
    # tokens only: with batch_invariant (the default) each finishing request is decoded on its own, so that its
    # images never depend on what finished with it (a decoder pass's arithmetic may depend on its batch size);
    # batch_invariant=False decodes them together (tests below)
    one, many = _rounds(c2i16_files, 1, "tokens"), _rounds(c2i16_files, 16, "tokens")
    assert len(one) == len(many)
    assert one[0].ops == many[0].ops, (one[0].total, many[0].total)      # join: prefill, step 0, first AR step
    assert one[-1].ops == many[-1].ops, (one[-1].total, many[-1].total)  # last AR step, decoding, results
    assert sum(r.total for r in many) <= sum(r.total for r in one) + 200  # the whole job


def test_finishing_requests_decoded_in_chunks_give_their_own_images(c2i16_files, single_thread, monkeypatch):
    """Requests finishing together are decoded in passes of at most ``memory.decode_chunk`` images: with a chunk
    of 1 image, and with all in one pass, each request gets the images of its own tokens."""
    import numpy as np

    import bitdance_rt.engine.runner as runner_module

    results = {}
    for chunk in (1, None):
        if chunk is not None:
            monkeypatch.setattr(runner_module, "decode_chunk", lambda d, h, w: chunk)
        else:
            monkeypatch.undo()
        rt = _c2i(c2i16_files, max_batch=8, batch_invariant=False)  # decoded together, in chunks
        handles = [rt.submit(class_label=i, guidance_scale=3.0, seed=i, num_sampling_steps=1, output_type="np",
                             num_images=1 + (i == 1)) for i in range(3)]
        while not all(h.done for h in handles):
            rt.step()
        assert not rt.family.model.decoder_layout.gan_decoder  # the chunked path
        results[chunk] = [h.result() for h in handles]
    for a, b in zip(results[1], results[None]):
        assert torch.equal(a.tokens, b.tokens)
        assert a.images.shape == b.images.shape and a.images.shape[0] == a.tokens.shape[0]
        assert np.abs(a.images.astype(int) - b.images.astype(int)).max() <= 1
    assert not np.array_equal(results[None][0].images, results[None][2].images)
