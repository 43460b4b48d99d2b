"""Qwen3Backbone against a tiny transformers Qwen3Model (eager attention, float32) with random weights.

The T2I attention pattern is built here from its definition: the first ``CAUSAL`` tokens attend causally, the
rest form blocks of ``P`` tokens that see everything before them and each other. transformers 5.23 passes a 4D
``attention_mask`` through unchanged and *adds* it to the eager scores, so it gets an additive float mask
(0 = attend, float32 min = masked), the form transformers itself builds for eager attention.
Tolerance: relative error ||ours - ref|| / ||ref|| < 1e-5 in float32.
"""

import pytest
import torch
import transformers

from bitdance_rt.errors import CheckpointError, InvalidRequestError
from bitdance_rt.reference.qwen3 import Qwen3Backbone, Qwen3Config

CAUSAL, P, BLOCKS = 5, 4, 3
LENGTH = CAUSAL + P * BLOCKS
TOLERANCE = 1e-5


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_hf_model(attention_bias: bool = False, attn_implementation: str = "eager") -> transformers.Qwen3Model:
    config = transformers.Qwen3Config(
        vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6, attention_bias=attention_bias,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6}, max_position_embeddings=512,
        attn_implementation=attn_implementation)
    with torch.random.fork_rng():  # transformers' own init draws from the global generator; keep it untouched
        model = transformers.Qwen3Model(config)
    g = generator(11)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=g)
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.3 * noise)
            elif name.endswith("bias"):
                param.copy_(0.1 * noise)
            elif name == "embed_tokens.weight":
                param.copy_(noise)
            else:
                param.copy_(noise / param.shape[1] ** 0.5)
    return model.eval()


def ours_from(hf: transformers.Qwen3Model) -> Qwen3Backbone:
    config = Qwen3Config.from_hf_dict(hf.config.to_dict(), "tiny config")
    with torch.device("meta"):
        ours = Qwen3Backbone(config)
    ours.load_state_dict(hf.state_dict(), strict=True, assign=True)
    return ours.eval()


def t2i_block_mask(length: int) -> torch.Tensor:
    """[length, length] bool: token i may attend to j iff block(j) <= block(i)."""
    def block(i: int) -> int:
        return i if i < CAUSAL else CAUSAL + (i - CAUSAL) // P
    return torch.tensor([[block(j) <= block(i) for j in range(length)] for i in range(length)])


def additive(mask: torch.Tensor) -> torch.Tensor:
    return torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).norm() / ref.norm()).item()


def hf_full_pass(hf: transformers.Qwen3Model, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    batch, length = embeds.shape[:2]
    with torch.no_grad():
        out = hf(inputs_embeds=embeds, attention_mask=additive(mask).expand(batch, 1, length, length),
                 position_ids=torch.arange(length)[None].expand(batch, length), use_cache=False)
    return out.last_hidden_state


def incremental(ours: Qwen3Backbone, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Prefill the causal prefix, then one block of P at a time, through the KV cache."""
    cache = ours.new_cache(embeds.shape[0], LENGTH)
    bounds = [0, CAUSAL] + [CAUSAL + P * (b + 1) for b in range(BLOCKS)]
    outputs = []
    with torch.no_grad():
        for start, end in zip(bounds, bounds[1:]):
            step_mask = mask[start:end, :end][None, None]
            outputs.append(ours(embeds[:, start:end], torch.arange(start, end), step_mask, cache))
    assert cache.length == LENGTH
    return torch.cat(outputs, dim=1)


def test_mask_definition():
    mask = t2i_block_mask(LENGTH)
    assert mask[CAUSAL - 1, :CAUSAL].all() and not mask[CAUSAL - 2, CAUSAL - 1]
    assert mask[CAUSAL, :CAUSAL + P].all() and not mask[CAUSAL, CAUSAL + P:].any()  # first block is bidirectional


@pytest.mark.parametrize("attention_bias", [False, True])
def test_full_pass_matches_transformers(attention_bias):
    hf = tiny_hf_model(attention_bias)
    ours = ours_from(hf)
    ids = torch.randint(0, 97, (1, LENGTH), generator=generator(12))
    embeds = ours.embed(ids)
    assert torch.equal(embeds, hf.embed_tokens(ids))
    mask = t2i_block_mask(LENGTH)
    with torch.no_grad():
        full = ours(embeds, torch.arange(LENGTH), mask[None, None])
    assert relative_error(full, hf_full_pass(hf, embeds, mask)) < TOLERANCE


def test_incremental_with_cache_matches_full_pass():
    hf = tiny_hf_model()
    ours = ours_from(hf)
    embeds = torch.randn(1, LENGTH, 64, generator=generator(13))
    mask = t2i_block_mask(LENGTH)
    with torch.no_grad():
        full = ours(embeds, torch.arange(LENGTH), mask[None, None])
    stepped = incremental(ours, embeds, mask)
    assert relative_error(stepped, full) < TOLERANCE
    assert relative_error(stepped, hf_full_pass(hf, embeds, mask)) < TOLERANCE


def test_release_call_pattern_is_bitwise_transformers_sdpa():
    """The release's calls on its default ("sdpa") attention: a causal prefill without a mask, then cached blocks
    with an all-True mask. Our backbone makes the same SDPA calls, so float32 CPU results are identical."""
    hf = tiny_hf_model(attn_implementation="sdpa")
    ours = ours_from(hf)
    embeds = torch.randn(2, LENGTH, 64, generator=generator(15))
    cache = ours.new_cache(2, LENGTH)
    with torch.no_grad():
        ref = hf(inputs_embeds=embeds[:, :CAUSAL], use_cache=True)
        past = ref.past_key_values
        got = ours(embeds[:, :CAUSAL], torch.arange(CAUSAL), None, cache)
        assert torch.equal(got, ref.last_hidden_state)
        for b in range(BLOCKS):
            start, end = CAUSAL + P * b, CAUSAL + P * (b + 1)
            ref = hf(inputs_embeds=embeds[:, start:end], past_key_values=past, use_cache=True,
                     attention_mask=torch.ones(2, 1, P, end, dtype=torch.bool))
            past = ref.past_key_values
            got = ours(embeds[:, start:end], torch.arange(start, end), torch.ones(1, 1, P, end, dtype=torch.bool),
                       cache)
            assert torch.equal(got, ref.last_hidden_state), b


def test_batch_of_two_matches_transformers_and_single_rows():
    hf = tiny_hf_model()
    ours = ours_from(hf)
    embeds = torch.randn(2, LENGTH, 64, generator=generator(14))
    mask = t2i_block_mask(LENGTH)
    with torch.no_grad():
        full = ours(embeds, torch.arange(LENGTH), mask.expand(2, 1, LENGTH, LENGTH))
        rows = torch.cat([ours(embeds[i:i + 1], torch.arange(LENGTH), mask[None, None]) for i in range(2)])
    assert relative_error(full, hf_full_pass(hf, embeds, mask)) < TOLERANCE
    assert relative_error(full, rows) < TOLERANCE
    assert relative_error(incremental(ours, embeds, mask), full) < TOLERANCE


def test_expected_shapes_cover_the_state_dict():
    hf = tiny_hf_model(attention_bias=True)
    ours = ours_from(hf)
    shapes = {key: tuple(value.shape) for key, value in ours.state_dict().items()}
    assert ours.config.expected_shapes() == shapes
    assert shapes == {key: tuple(value.shape) for key, value in hf.state_dict().items()}
    cache = ours.new_cache(3, 10)
    assert cache.keys[0].shape == (3, 2, 10, 16) and len(cache.keys) == 2


def test_forward_rejects_bad_inputs():
    ours = ours_from(tiny_hf_model())
    embeds = torch.randn(1, 4, 64, generator=generator(15))
    ok_mask = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    with pytest.raises(InvalidRequestError, match="positions"):
        ours(embeds, torch.arange(3), ok_mask)
    with pytest.raises(InvalidRequestError, match="attn_mask"):
        ours(embeds, torch.arange(4), ok_mask.float())
    with pytest.raises(InvalidRequestError, match="attn_mask"):
        ours(embeds, torch.arange(4), torch.ones(1, 1, 4, 5, dtype=torch.bool))
    with pytest.raises(InvalidRequestError, match="attend to nothing"):
        ours(embeds, torch.arange(4), torch.zeros(1, 1, 4, 4, dtype=torch.bool))
    with pytest.raises(InvalidRequestError, match="exceed"):
        ours(embeds, torch.arange(4), ok_mask, ours.new_cache(1, 3))


BASE_CONFIG = {
    "model_type": "qwen3", "vocab_size": 151936, "hidden_size": 5120, "intermediate_size": 17408,
    "num_hidden_layers": 40, "num_attention_heads": 40, "num_key_value_heads": 8, "head_dim": 128,
    "rms_norm_eps": 1e-6, "rope_theta": 1000000, "rope_scaling": None, "attention_bias": False,
    "max_position_embeddings": 40960, "hidden_act": "silu", "use_sliding_window": False,
}


def test_from_hf_dict_reads_every_number():
    config = Qwen3Config.from_hf_dict(BASE_CONFIG, "14b/config.json")
    assert (config.hidden_size, config.num_hidden_layers, config.num_key_value_heads, config.head_dim,
            config.intermediate_size, config.rope_theta) == (5120, 40, 8, 128, 17408, 1e6)
    newer = {k: v for k, v in BASE_CONFIG.items() if k not in ("rope_theta", "rope_scaling")}
    newer["rope_parameters"] = {"rope_type": "default", "rope_theta": 5e5}
    assert Qwen3Config.from_hf_dict(newer, "x").rope_theta == 5e5
    no_head_dim = {k: v for k, v in BASE_CONFIG.items() if k != "head_dim"}
    assert Qwen3Config.from_hf_dict(no_head_dim, "x").head_dim == transformers.Qwen3Config().head_dim


@pytest.mark.parametrize("change,field", [
    ({"hidden_size": None}, "hidden_size"),
    ({"num_key_value_heads": 0}, "num_key_value_heads"),
    ({"num_key_value_heads": 7}, "num_key_value_heads"),
    ({"rms_norm_eps": "tiny"}, "rms_norm_eps"),
    ({"rope_theta": None}, "rope_theta"),
    ({"model_type": "llama"}, "model_type"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_type"),
    ({"use_sliding_window": True}, "use_sliding_window"),
    ({"attention_bias": "no"}, "attention_bias"),
])
def test_from_hf_dict_errors_name_the_field(change, field):
    bad = {**BASE_CONFIG, **change}
    with pytest.raises(CheckpointError, match=f"bad/config.json: field '{field}'"):
        Qwen3Config.from_hf_dict(bad, "bad/config.json")


def test_from_hf_dict_missing_field():
    missing = {k: v for k, v in BASE_CONFIG.items() if k != "intermediate_size"}
    with pytest.raises(CheckpointError, match="field 'intermediate_size' is missing"):
        Qwen3Config.from_hf_dict(missing, "bad/config.json")
