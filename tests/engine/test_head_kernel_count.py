"""Kernel launches of one pass of the head (``FusedHead``: the step's condition and one forward) on the Triton
operations, counted on the CPU: every engine operation called is one launch (its own aten calls are not counted
again), every other dispatched aten operation that is neither a view nor an allocation is one more (a GEMM, a
repeat, an elementwise op PyTorch launches). The pass must have no PyTorch elementwise op left between the
GEMMs: the condition (add + SiLU) is ``time_condition``, the output map (sigmoid, multiply, subtract) is
``sigmoid_output``. Before these fusions a pass had 1 more launch (add + SiLU), 3 more with a sigmoid output
(sigmoid, multiply, subtract): tiny class-conditional P=16 guided 27 -> 26, tiny text-to-image P=64 guided 30 -> 27.

Per block, with the GEMM epilogues fused (``float_gemm="ours"``, and always for 8-bit weights: the gated residual in
the GEMM that feeds it, SwiGLU in w1's): a TransBlock 10 -> 7 launches (LayerNorm-modulate, qkv, attention,
wo + gated residual, LayerNorm-modulate, w1 + SwiGLU, w2 + gated residual), a ResBlock 5 -> 3 (LayerNorm-modulate,
w1 + SwiGLU, w2 + gated residual): tiny class-conditional P=16 (2 TransBlocks) guided 26 -> 20, unguided 25 -> 19
(measured here; the 3 float GEMMs left are the adaLN one through ``float_linear``, input_proj and the final linear).
With the default (``"measured"``, whose table is empty until benchmarked on a
GPU: cuBLAS and the separate kernels) the counts are unchanged."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bitdance_rt import Runtime
from bitdance_rt.ops import OP_NAMES

ALLOCATIONS = {"aten.empty", "aten.empty_strided", "aten.empty_like"}


class LaunchCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.launches: Counter[str] = Counter()
        self.inside = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if not self.inside and not func.is_view and name not in ALLOCATIONS:
            self.launches[name] += 1
        return func(*args, **(kwargs or {}))


def count_head_pass(head, c_emb, x, times, mult) -> Counter:
    counter = LaunchCounter()
    ops = head.ops
    originals = {name: getattr(ops, name) for name in OP_NAMES if hasattr(ops, name)}

    def wrap(name, fn):
        def counted(*args, **kwargs):
            counter.launches[f"op.{name}"] += 1
            counter.inside += 1
            try:
                return fn(*args, **kwargs)
            finally:
                counter.inside -= 1
        return counted
    for name, fn in originals.items():
        setattr(ops, name, wrap(name, fn))
    try:
        y = torch.empty_like(c_emb)
        with counter:
            ops.time_condition(c_emb, times.embeddings[0], out=y)
            head.forward(x, y, mult)
    finally:
        for name in originals:
            delattr(ops, name)
    return counter.launches


@pytest.mark.parametrize("float_gemm", ["measured", "ours"])
@pytest.mark.parametrize("guided", [True, False])
def test_head_pass_launches(c2i16_files, guided, float_gemm):
    model, tokenizer = c2i16_files
    rt = Runtime.from_pretrained(model, tokenizer_path=tokenizer, device="cpu", dtype=torch.float32,
                                 backend="triton", float_gemm=float_gemm)
    head = rt.engine.head
    cfg = head.cfg
    mult, rows, p = (2 if guided else 1), 3, rt.family.parallel
    times = head.step_times(2)
    c_emb = torch.randn(mult * rows * p, cfg.width)
    x = torch.randn(rows, p, cfg.token_channels)
    with torch.no_grad():
        launches = count_head_pass(head, c_emb, x, times, mult)
    total = sum(launches.values())
    print(f"head pass launches ({'guided' if guided else 'unguided'}): {total} {dict(launches)}")
    elementwise = {"aten.add", "aten.silu", "aten.sigmoid", "aten.mul", "aten.sub", "aten.rsub", "aten.copy_"}
    assert not elementwise & set(launches), launches
    assert launches["op.time_condition"] == 1
    assert launches["op.sigmoid_output"] == (1 if cfg.sigmoid_output else 0)
    fused = float_gemm == "ours"  # the epilogues in our GEMM: wo/w2 + gated residual, w1 + SwiGLU
    per_block = (7 if fused else 10) if cfg.block_kind == "trans" else (3 if fused else 5)
    # condition, input_proj, (repeat), adaLN GEMM, blocks, final LayerNorm-modulate and linear, (output map)
    assert total == 1 + 1 + (mult > 1) + 1 + per_block * cfg.depth + 2 + cfg.sigmoid_output, launches
