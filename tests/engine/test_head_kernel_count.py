"""Kernel launches of one sampling step of the head (``FusedHead``: the step's condition and ``sampling_step``,
i.e. the head's pass and the sampler step) on the Triton operations, counted on the CPU: every engine operation
called is one launch (its own aten calls are not counted again), every other dispatched aten operation that is
neither a view nor an allocation is one more (a GEMM, a repeat, an elementwise op PyTorch launches). The pass must
have no PyTorch elementwise op left between the GEMMs: the condition (add + SiLU) is ``time_condition``; the
input projection with its guided repeat is ``input_projection``; the final layer (LayerNorm-modulate, linear,
``2·sigmoid − 1``) and the sampler step are ``final_layer_step``.

Per step, with depth blocks of k launches each, m = 2 guided, s = 1 for a sigmoid-output model:
- before (``ends="separate"``: the separate operations, still the fallback for an 8-bit input_proj / final linear):
  1 condition + 1 input GEMM + (m > 1) repeat + 1 adaLN GEMM + k·depth + 2 (final LayerNorm-modulate, linear)
  + s (``sigmoid_output``) + 1 (``sampler_step``);
- after (``ends="fused"``): 1 + 1 (``input_projection``) + 1 + k·depth + 1 (``final_layer_step``): 2 + (m > 1) + s
  fewer.
k per block: 10 for a TransBlock, 5 for a ResBlock with cuBLAS and the separate ``swiglu`` / ``gated_residual``
kernels (``float_gemm="measured"``, whose table is empty until benchmarked on a GPU); with the GEMM epilogues
fused (``float_gemm="ours"``, and always for 8-bit weights: the gated residual in the GEMM that feeds it, SwiGLU
in w1's) a TransBlock 7 (LayerNorm-modulate, qkv, attention, wo + gated residual, LayerNorm-modulate,
w1 + SwiGLU, w2 + gated residual), a ResBlock 3.
Measured here (tiny models, 2 TransBlocks each), before -> after:
- class-conditional P=16, "measured": guided 27 -> 24, unguided 26 -> 24; "ours": guided 21 -> 18, unguided
  20 -> 18;
- text-to-image P=64 (sigmoid output), "measured": guided 28 -> 24, unguided 27 -> 24; "ours": guided 22 -> 18,
  unguided 21 -> 18.
(Earlier fusions: before ``time_condition`` and ``sigmoid_output`` a pass had 1 more launch, 3 more with a sigmoid
output.)"""

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


def count_head_pass(head, c_emb, x, times, guided) -> Counter:
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
        noise = torch.randn_like(x)
        with counter:
            ops.time_condition(c_emb, times.embeddings[0], out=y)
            head.sampling_step(x, y, times, 0, 4.0, guided, noise)
    finally:
        for name in originals:
            delattr(ops, name)
    return counter.launches


@pytest.mark.parametrize("ends", ["fused", "separate"])
@pytest.mark.parametrize("float_gemm", ["measured", "ours"])
@pytest.mark.parametrize("guided", [True, False], ids=["guided", "unguided"])
@pytest.mark.parametrize("model", ["c2i16", "t2i64"])
def test_head_pass_launches(request, model, guided, float_gemm, ends):
    if model == "c2i16":
        path, tokenizer = request.getfixturevalue("c2i16_files")
    else:
        path, tokenizer = request.getfixturevalue("t2i64_dir"), None
    rt = Runtime.from_pretrained(path, tokenizer_path=tokenizer, device="cpu", dtype=torch.float32,
                                 backend="triton", float_gemm=float_gemm)
    head = rt.engine.head
    fused = ends == "fused"
    head.fused_input = head.fused_final = fused  # separate: the chain before these fusions (the 8-bit fallback)
    cfg = head.cfg
    mult, rows, p = (2 if guided else 1), 3, rt.family.parallel
    times = head.step_times(2)
    c_emb = torch.randn(mult * rows * p, cfg.width)
    x = torch.randn(rows, p, cfg.token_channels)
    with torch.no_grad():
        launches = count_head_pass(head, c_emb, x, times, guided)
    total = sum(launches.values())
    print(f"{model} head step launches ({'guided' if guided else 'unguided'}, float_gemm {float_gemm}, {ends} "
          f"ends): {total} {dict(launches)}")
    elementwise = {"aten.add", "aten.silu", "aten.sigmoid", "aten.mul", "aten.sub", "aten.rsub", "aten.copy_"}
    assert not elementwise & set(launches), launches
    assert launches["op.time_condition"] == 1
    epilogues = float_gemm == "ours"  # the epilogues in our GEMM: wo/w2 + gated residual, w1 + SwiGLU
    per_block = (7 if epilogues else 10) if cfg.block_kind == "trans" else (3 if epilogues else 5)
    blocks = per_block * cfg.depth
    if fused:
        assert launches["op.input_projection"] == 1 and launches["op.final_layer_step"] == 1, launches
        assert launches["op.sigmoid_output"] == 0 and launches["op.sampler_step"] == 0, launches
        # condition, input_projection, adaLN GEMM, blocks, final layer + sampler step
        assert total == 1 + 1 + 1 + blocks + 1, launches
    else:
        assert launches["op.sigmoid_output"] == (1 if cfg.sigmoid_output else 0)
        # condition, input_proj, (repeat), adaLN GEMM, blocks, final LayerNorm-modulate and linear, (output map),
        # sampler step
        assert total == 1 + 1 + (mult > 1) + 1 + blocks + 2 + cfg.sigmoid_output + 1, launches
