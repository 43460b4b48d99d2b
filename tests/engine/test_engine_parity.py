"""The engine against the reference modules under teacher forcing, through the production path: the model runner's
``join`` and ``step`` (``engine/runner.py``: per-slot AR steps and guidance scales written into the batch, the head
over the interleaved guidance rows, the feedback copy, ``lengths.mul_(live)``), for both families and both the
Triton (through the interpreter on the CPU) and the PyTorch operation providers; the class-conditional case also with
every float GEMM on our Triton ``float_gemm`` with the fused SwiGLU / gated-residual epilogues (``"triton-ours"``).

Both sides get the same keyed noise (``reference/philox_noise.py``: image seed, AR step, row of the image, sample
index) and the same token history: after each AR step the engine's fed-back tokens are replaced by the reference's
(a wrapper around the engine's ``decode`` calls, the only change to the production path). Per AR step we compare
the sampled tokens (bit agreement >= 99.9 %) and the backbone's hidden states (relative error < 1e-4 in float32).
The engine differs from the reference by summation order only.
"""

from __future__ import annotations

import pytest
import torch

from bitdance_rt.engine.runner import Active, Join
from bitdance_rt.families.t2i_reference_loop import RowGroup
from bitdance_rt.quantization import QuantizedWeight
from bitdance_rt.reference.masks import block_causal_mask
from bitdance_rt.reference.philox_noise import keyed_normal
from bitdance_rt.reference.sampler import linear_guidance, sample_patch
from bitdance_rt.reference.t2i_embeddings import t2i_position_table
from bitdance_rt.request import ImageRequest, resolve_request
from bitdance_rt.runtime import Runtime
from engine_testing import ENGINE_DEVICE, placement

HIDDEN_TOL = 1e-4
MIN_BIT_AGREEMENT = 0.999
STEPS = 2      # sampling steps per AR step: enough to exercise step, final step and guidance
AR_STEPS = 3   # AR steps compared (teacher-forced, so the first few say as much as all)
PROVIDERS = ["triton", "torch"]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a == b).double().mean().item()


def keyed_replay(seeds: torch.Tensor, ar_step: int, rows: torch.Tensor, patch: int, channels: int):
    """A reference NoiseFn handing out the keyed samples 0, 1, ... of ``seeds`` / ``rows`` at ``ar_step``: the noise
    the engine's sampler draws for those rows."""
    index = iter(range(10 ** 6))
    steps = torch.full_like(rows, ar_step)

    def draw(shape):
        n = keyed_normal(seeds, steps, rows, next(index), patch, channels)
        assert tuple(n.shape) == tuple(shape)
        return n
    return draw


def engine_runtime(files, provider: str, quantization: str | None = None) -> Runtime:
    """``provider="triton"``: the Triton engine; ``"triton-ours"``: the same with every float GEMM on our Triton
    ``float_gemm`` and its fused epilogues (SwiGLU, gated residual); ``"torch"``: the reference backend's runner
    (PyTorch operations)."""
    path, tokenizer = files if isinstance(files, tuple) else (files, None)
    backend = "triton" if provider.startswith("triton") else "reference"
    float_gemm = "ours" if provider == "triton-ours" else "measured"
    return Runtime.from_pretrained(path, tokenizer_path=tokenizer, quantization=quantization, float_gemm=float_gemm,
                                   **placement(backend))


class Tolerance:
    """The bounds one parity run asserts (default: the float engine's), and the worst values it saw."""

    def __init__(self, hidden_tol: float = HIDDEN_TOL, min_bits: float = MIN_BIT_AGREEMENT):
        self.hidden_tol, self.min_bits = hidden_tol, min_bits
        self.worst_hidden, self.worst_bits = 0.0, 1.0

    def hidden(self, value: float) -> None:
        self.worst_hidden = max(self.worst_hidden, value)
        assert value < self.hidden_tol

    def bits(self, value: float) -> None:
        self.worst_bits = min(self.worst_bits, value)
        assert value >= self.min_bits


def check_loaded_as(rt: Runtime, ref: Runtime, quantization: str | None) -> None:
    """Both runtimes hold ``quantization``'s weights, and the engine's GEMMs read 8-bit weights when quantized."""
    assert rt.family.quantization == ref.family.quantization == quantization
    layer = rt.runner.engine.layout.layers[0]
    weights = (layer.qkv, layer.out, layer.gate_up, layer.down, rt.runner.engine.head.adaln_weight)
    assert all(isinstance(w, QuantizedWeight) == (quantization is not None) for w in weights)


class TeacherForcing:
    """Wraps the engine's ``decode`` (the backbone step every fed-back block goes through, eager or inside the
    AR step) so that it embeds the reference's tokens instead of the engine's own; records the hidden states."""

    def __init__(self, engine, monkeypatch):
        self.engine, self.forced = engine, None
        embed = engine.embed_feedback

        def forced_embed(tokens, pos):
            assert self.forced is not None, "a decode ran without reference tokens"
            assert tuple(self.forced.shape) == tuple(tokens.shape)
            return embed(self.forced.to(tokens.dtype), pos)
        monkeypatch.setattr(engine, "embed_feedback", forced_embed)
        monkeypatch.setattr(engine, "use_cuda_graphs", False)  # the wrapper must run at every step


def slot_rows(cond: torch.Tensor, uncond: torch.Tensor | None) -> torch.Tensor:
    """Reference rows (conditional half, then unconditional half) -> cache-row order (cond, uncond per slot)."""
    if uncond is None:
        return cond
    return torch.stack([cond, uncond], dim=1).flatten(0, 1)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_t2i_teacher_forced_through_the_runner(t2i64_dir, provider, monkeypatch):
    t2i_teacher_forced(t2i64_dir, provider, monkeypatch)


def t2i_teacher_forced(t2i64_dir, provider: str, monkeypatch, quantization: str | None = None,
                       ar_steps: int = AR_STEPS, tol: "Tolerance | None" = None) -> None:
    """The T2I parity check; ``quantization``: both sides loaded with it (the reference runs the quantized
    reference math)."""
    tol = tol or Tolerance()
    ref = Runtime.from_pretrained(t2i64_dir, quantization=quantization, **placement("reference"))
    rt = engine_runtime(t2i64_dir, provider, quantization)
    check_loaded_as(rt, ref, quantization)
    family, model, runner = rt.family, ref.model, rt.runner
    p, c, guidance = family.parallel, family.token_channels, 4.0
    prompts, seeds = ["a red fox", "two cats on a long sofa"], [11, 12]
    specs = [resolve_request(ImageRequest(prompt=x, negative_prompt="blurry", height=512, width=512, seed=s,
                                          num_sampling_steps=STEPS, guidance_scale=guidance), family)
             for x, s in zip(prompts, seeds)]
    placements = [family.placement(s) for s in specs]
    key, slots, max_len = ("parity",), 2, max(pl.max_len for pl in placements)
    forcing = TeacherForcing(runner.engine, monkeypatch)

    rows = [row for pl in placements for row in pl.rows]   # cache-row order: cond, uncond per slot
    assert len({len(r) for r in rows}) > 1  # rows of different lengths share the batch
    groups = [RowGroup(r, 1) for r in rows]
    pos = t2i_position_table(32, 32, model.backbone_config.hidden_size, 8).to(ENGINE_DEVICE)
    key_seeds = torch.tensor(seeds, device=ENGINE_DEVICE)
    with torch.no_grad():
        ref_hidden = torch.cat([g.prefill(model, len(g.ids) + ar_steps * p) for g in groups])
        done = runner.join(key, slots, max_len, [Join(f"r{i}", s, i, pl.rows)
                                                 for i, (s, pl) in enumerate(zip(specs, placements))])
        assert done == []
        batch = runner.slot_batch(key)
        tol.hidden(rel(batch.hidden, ref_hidden))
        for k in range(ar_steps):
            cond = ref_hidden + pos[k * p:(k + 1) * p]
            halves = torch.cat([cond[0::2], cond[1::2]])  # the sampler's order: conditional rows, then the others
            noise = keyed_replay(key_seeds, k, torch.zeros(2, dtype=torch.int32, device=ENGINE_DEVICE), p, c)
            ref_tokens = torch.sign(sample_patch(model.head, halves, c, guidance, STEPS, noise))
            forcing.forced = slot_rows(ref_tokens[:2], ref_tokens[2:])
            runner.step(key, slots, [Active(f"r{i}", i, 1, k, s) for i, s in enumerate(specs)])
            made = torch.cat([runner.tokens(f"r{i}")[:, k * p:(k + 1) * p] for i in range(2)])
            tol.bits(agreement(made.float(), ref_tokens[:2]))
            embeds = model.projector(forcing.forced) + pos[k * p:(k + 1) * p]
            ref_hidden = torch.cat([g.step(model, embeds[i:i + 1]) for i, g in enumerate(groups)])
            tol.hidden(rel(batch.hidden, ref_hidden))
    assert batch.cache.lengths.tolist() == [len(r) + ar_steps * p for r in rows]


@pytest.mark.parametrize("provider", PROVIDERS + ["triton-ours"])
def test_c2i_teacher_forced_through_the_runner(c2i16_files, provider, monkeypatch):
    c2i_teacher_forced(c2i16_files, provider, monkeypatch)


def c2i_teacher_forced(c2i16_files, provider: str, monkeypatch, quantization: str | None = None,
                       ar_steps: int = AR_STEPS, tol: "Tolerance | None" = None) -> None:
    """The class-conditional parity check; ``quantization`` as in ``t2i_teacher_forced``."""
    tol = tol or Tolerance()
    model_path, tokenizer = c2i16_files
    ref = Runtime.from_pretrained(model_path, tokenizer_path=tokenizer, quantization=quantization,
                                  **placement("reference"))
    rt = engine_runtime(c2i16_files, provider, quantization)
    check_loaded_as(rt, ref, quantization)
    family, model, runner = rt.family, ref.model, rt.runner
    bb, cfg = model.backbone, model.config
    p, c, guidance = cfg.parallel, cfg.token_channels, 3.0
    labels, seeds = [3, 999], [21, 22]
    specs = [resolve_request(ImageRequest(class_label=x, seed=s, num_sampling_steps=STEPS, guidance_scale=guidance),
                             family) for x, s in zip(labels, seeds)]
    num_ar = specs[0].num_ar
    key, slots, max_len = ("parity",), 2, cfg.num_prefix + cfg.num_tokens
    forcing = TeacherForcing(runner.engine, monkeypatch)
    null = cfg.null_class
    rows = torch.tensor([labels[0], null, labels[1], null], device=ENGINE_DEVICE)  # cache-row order
    key_seeds = torch.tensor(seeds, device=ENGINE_DEVICE)
    zeros = torch.zeros(2, dtype=torch.int32, device=ENGINE_DEVICE)
    ref_cache = bb.new_cache(4)
    with torch.no_grad():
        ref_hidden = bb(bb.class_tokens(rows), block_causal_mask(cfg.num_prefix, cfg.causal_len, p), ref_cache)
        # step 0 (the release's unguided step over all rows) runs inside the join, on the joining rows
        cond = bb.head_condition(ref_hidden, 0)
        noise = keyed_replay(key_seeds.repeat(2), 0, torch.tensor([0, 0, 1, 1], dtype=torch.int32,
                                                                  device=ENGINE_DEVICE), p, c)
        step0 = torch.sign(sample_patch(model.head, torch.cat([cond[0::2], cond[1::2]]), c, 1.0, STEPS, noise))
        forcing.forced = slot_rows(step0[:2], step0[2:])
        done = runner.join(key, slots, max_len, [Join(f"r{i}", s, i, family.cache_rows(s))
                                                 for i, s in enumerate(specs)])
        assert done == [1]
        made = torch.cat([runner.tokens(f"r{i}")[:, :p] for i in range(2)])
        tol.bits(agreement(made.float(), step0[:2]))
        mask = torch.ones(p, ref_cache.length + p, dtype=torch.bool, device=ENGINE_DEVICE)
        ref_hidden = bb(bb.embed_tokens(forcing.forced), mask, ref_cache)
        batch = runner.slot_batch(key)
        tol.hidden(rel(batch.hidden, ref_hidden))
        for k in range(1, ar_steps):
            cond = bb.head_condition(ref_hidden, k)
            scale = linear_guidance(guidance, k, num_ar)
            noise = keyed_replay(key_seeds, k, zeros, p, c)
            ref_tokens = torch.sign(sample_patch(model.head, torch.cat([cond[0::2], cond[1::2]]), c, scale, STEPS,
                                                 noise))
            forcing.forced = slot_rows(ref_tokens[:2], ref_tokens[2:])
            runner.step(key, slots, [Active(f"r{i}", i, 1, k, s) for i, s in enumerate(specs)])
            made = torch.cat([runner.tokens(f"r{i}")[:, k * p:(k + 1) * p] for i in range(2)])
            tol.bits(agreement(made.float(), ref_tokens[:2]))
            mask = torch.ones(p, ref_cache.length + p, dtype=torch.bool, device=ENGINE_DEVICE)
            ref_hidden = bb(bb.embed_tokens(forcing.forced), mask, ref_cache)
            tol.hidden(rel(batch.hidden, ref_hidden))
