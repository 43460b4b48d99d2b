"""One pass of the head's fused loop (``FusedHead.forward``) with every float GEMM on our Triton ``float_gemm`` and
its epilogues (``float_gemm="ours"``: SwiGLU in w1, the gated residual in attn.wo / w2 / mlp.2) against the same pass
on the PyTorch provider (F.linear and the reference elementwise ops), for each block kind the tiny models have:
TransBlocks with SwiGLU (class-conditional P = 16), ResBlocks (class-conditional P = 1), the text-to-image head
(TransBlocks, sigmoid output), guided and unguided; and a TransBlock head with the plain MLP (``use_swiglu=False``:
the tiny models have none; random weights, fused at load as the loader does). Fresh random x and condition; float32
through the interpreter; relative error < 1e-5 (summation order only), any NaN failing."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bitdance_rt import Runtime
from bitdance_rt.engine.head_loop import FusedHead
from bitdance_rt.loading.fused_weights import fuse_for_engine
from bitdance_rt.reference.diffusion_head import DiffusionHead
from bitdance_rt.ops import OpSet

TOL = 1e-5


@pytest.mark.parametrize("guided", [True, False])
@pytest.mark.parametrize("model", ["c2i16", "c2i1", "t2i64"])
def test_fused_epilogues_in_the_head_equal_the_reference_ops(request, model, guided):
    files = request.getfixturevalue({"c2i16": "c2i16_files", "c2i1": "c2i1_files", "t2i64": "t2i64_dir"}[model])
    path, tokenizer = files if isinstance(files, tuple) else (files, None)
    rt = Runtime.from_pretrained(path, tokenizer_path=tokenizer, device="cpu", dtype=torch.float32,
                                 backend="reference")
    head, p = rt.model.head, rt.family.parallel
    check_one_pass(head, p, guided, model)


def test_plain_mlp_head(c2i16_files):
    path, tokenizer = c2i16_files
    rt = Runtime.from_pretrained(path, tokenizer_path=tokenizer, device="cpu", dtype=torch.float32,
                                 backend="reference")
    torch.manual_seed(3)
    head = DiffusionHead(dataclasses.replace(rt.model.head.cfg, use_swiglu=False)).eval()
    with torch.no_grad():
        for param in head.parameters():  # the release's zero-initialised gates would hide the blocks
            param.normal_(0.0, 0.2)
    fuse_for_engine(None, head)
    check_one_pass(head, rt.family.parallel, True, "c2i16-plain-mlp")


def check_one_pass(head, p: int, guided: bool, model: str) -> None:
    cfg = head.cfg
    ours = FusedHead(head, OpSet("cpu", ("triton", "torch"), float_gemm="ours"))
    ref = FusedHead(head, OpSet("cpu", "torch"))
    mult, rows = (2 if guided else 1), 3
    gen = torch.Generator().manual_seed(5 + p)
    x = torch.randn(rows, p, cfg.token_channels, generator=gen)
    y = torch.randn(mult * rows * p, cfg.width, generator=gen)
    with torch.no_grad():
        got, want = ours.forward(x, y, mult), ref.forward(x, y, mult)
    assert torch.isfinite(got).all()
    err = ((got.double() - want.double()).norm() / want.double().norm()).item()
    print(f"{model} {cfg.block_kind} swiglu={cfg.use_swiglu} guided={guided}: rel. error {err:.2e}")
    assert err < TOL
