"""The engine (backend="triton") against the reference backend under teacher forcing, on the tiny models.

Both backends get the same token history and the same noise tensors. Per AR step we compare the backbone's hidden
states (relative error < 1e-4 in float32 through Triton's interpreter) and the sampled tokens (bit agreement
>= 99.9 %). The engine differs from the reference by summation order only: one batch for conditional and
unconditional rows, a one-pass prefill with the block mask, kernels with their own reduction order.
"""

from __future__ import annotations

import pytest
import torch

from bitdance_rt.families.t2i_reference_loop import RowGroup
from bitdance_rt.prompt_tokenizer import chat_prompt
from bitdance_rt.reference.c2i_backbone import NUM_CLASSES
from bitdance_rt.reference.masks import C2I_CAUSAL_LEN, block_causal_mask
from bitdance_rt.reference.sampler import sample_patch
from bitdance_rt.reference.t2i_embeddings import t2i_position_table
from bitdance_rt.runtime import Runtime
from engine_testing import ENGINE_DEVICE, placement

HIDDEN_TOL = 1e-4
MIN_BIT_AGREEMENT = 0.999
STEPS = 2  # sampling steps per AR step: enough to exercise step, final step and guidance


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a == b).double().mean().item()


def replay(noise: torch.Tensor):
    """A reference NoiseFn handing out noise[0], noise[1], ... (the engine reads the same buffer)."""
    draws = iter(noise)

    def draw(shape):
        n = next(draws)
        assert tuple(n.shape) == tuple(shape)
        return n.clone()
    return draw


@pytest.fixture(scope="module")
def t2i_pair(t2i64_dir):
    return (Runtime.from_pretrained(t2i64_dir, **placement("reference")),
            Runtime.from_pretrained(t2i64_dir, **placement("triton")))


@pytest.fixture(scope="module")
def c2i_pair(c2i16_files):
    model, tokenizer = c2i16_files
    return (Runtime.from_pretrained(model, tokenizer_path=tokenizer, **placement("reference")),
            Runtime.from_pretrained(model, tokenizer_path=tokenizer, **placement("triton")))


def test_t2i_teacher_forced_steps(t2i_pair):
    ref_rt, eng_rt = t2i_pair
    model, engine = ref_rt.model, eng_rt.engine
    p, c, guidance = model.parallel, model.token_channels, 4.0
    tok = model.tokenizer
    start = tok.image_start_ids(32, 32, p)
    prompts, negative = ["a red fox", "two cats on a long sofa"], "blurry"
    seqs = [tok.encode(chat_prompt(x)) + start for x in prompts] + [tok.encode(chat_prompt(negative)) + start] * 2
    assert len({len(s) for s in seqs}) > 1  # rows of different lengths share the engine's batch
    groups = [RowGroup(s, 1) for s in seqs]
    cache = engine.pool.get(len(seqs), 256)
    pos = t2i_position_table(32, 32, model.backbone_config.hidden_size, 8).to(ENGINE_DEVICE)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        ref_hidden = torch.cat([g.prefill(model, len(g.ids) + 2 * p) for g in groups])
        eng_hidden = engine.prefill(seqs, cache)
        assert rel(eng_hidden, ref_hidden) < HIDDEN_TOL
        times = engine.head.step_times(STEPS)
        for k in range(2):
            cond = ref_hidden + pos[k * p:(k + 1) * p]
            noise = torch.randn(STEPS + 1, 2, p, c, generator=gen).to(ENGINE_DEVICE)

            def head(x, t, cc):
                return model.head(x, t, cc)
            ref_tokens = torch.sign(sample_patch(head, cond, c, guidance, STEPS, replay(noise)))
            eng_tokens = engine.head.sample(cond, noise, guidance, True, times)
            assert agreement(eng_tokens, ref_tokens) >= MIN_BIT_AGREEMENT
            # teacher forcing: both continue from the reference's tokens
            embeds = model.projector(ref_tokens) + pos[k * p:(k + 1) * p]
            ref_hidden = torch.cat([g.step(model, embeds[i:i + 1]) for i, g in enumerate(groups)])
            eng_hidden = engine.decode(embeds, cache)
            assert rel(eng_hidden, ref_hidden) < HIDDEN_TOL
    assert cache.lengths.tolist() == [len(s) + 2 * p for s in seqs]


def test_c2i_teacher_forced_steps(c2i_pair):
    ref_rt, eng_rt = c2i_pair
    model, engine = ref_rt.model, eng_rt.engine
    bb, cfg = model.backbone, model.config
    p, c = cfg.parallel, cfg.token_channels
    labels = torch.tensor([3, 999, NUM_CLASSES, NUM_CLASSES], device=ENGINE_DEVICE)
    ref_cache = bb.new_cache(4)
    cache = engine.pool.get(4, cfg.num_prefix + cfg.num_tokens)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        ref_hidden = bb(bb.class_tokens(labels), block_causal_mask(cfg.num_prefix, C2I_CAUSAL_LEN, p), ref_cache)
        eng_hidden = engine.prefill(labels, cache)
        assert rel(eng_hidden, ref_hidden) < HIDDEN_TOL
        times = engine.head.step_times(STEPS)
        for i, (scale, guided) in enumerate([(1.0, False), (3.0, True)]):  # step 0 is unguided over all rows
            cond = bb.head_condition(ref_hidden, i)
            noise = torch.randn(STEPS + 1, 4 if not guided else 2, p, c, generator=gen).to(ENGINE_DEVICE)
            ref_tokens = torch.sign(sample_patch(model.head, cond, c, scale, STEPS, replay(noise)))
            eng_tokens = engine.head.sample(bb.head_condition(eng_hidden, i), noise, scale, guided, times)
            assert agreement(eng_tokens, ref_tokens) >= MIN_BIT_AGREEMENT
            mask = torch.ones(p, ref_cache.length + p, dtype=torch.bool, device=ENGINE_DEVICE)
            ref_hidden = bb(bb.embed_tokens(ref_tokens), mask, ref_cache)
            eng_hidden = engine.decode(bb.embed_tokens(ref_tokens), cache)
            assert rel(eng_hidden[:, -p:], ref_hidden) < HIDDEN_TOL
