"""End-to-end ``Runtime`` on the tiny text-to-image models (P = 64 and P = 16, 512x512 -> 32x32 token grid).

Checks the public contract of ``Runtime.generate`` / ``decode_tokens`` / ``describe``: shapes and values of the
binary tokens, determinism in the seed (and its equivalence with a caller's generator), batch row order,
guidance and negative prompts, every output type, the progress callback, and that a failed call leaves the
runtime as it was. Token comparisons are exact (``torch.equal``); image comparisons are exact on uint8 pixels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from bitdance_rt.errors import InvalidRequestError
from bitdance_rt.outputs import GenerationOutput, to_pixels
from bitdance_rt.runtime import Runtime

STEPS = 2
GUIDANCE = 4.0
SEED = 11
PROMPT = "a red fox in the snow"
T2I_SIZE = (512, 512)  # the smallest square supported size
GRID_TOKENS = (T2I_SIZE[0] // 16) * (T2I_SIZE[1] // 16)  # 1024
CHANNELS = 32


def run(rt: Runtime, prompt=PROMPT, **kwargs) -> GenerationOutput:
    args = dict(height=T2I_SIZE[0], width=T2I_SIZE[1], num_sampling_steps=STEPS, guidance_scale=GUIDANCE,
                seed=SEED, output_type="tokens")
    args.update(kwargs)
    if "generator" in kwargs:
        args.pop("seed")
    return rt.generate(prompt, **args)


@pytest.fixture(scope="module")
def baseline(rt_t2i64: Runtime) -> torch.Tensor:
    """Tokens of the default call on the P = 64 model; every 'same call' below must reproduce them."""
    return run(rt_t2i64).tokens


@pytest.fixture(scope="module")
def baseline_np(rt_t2i64: Runtime) -> GenerationOutput:
    return run(rt_t2i64, num_sampling_steps=1, output_type="np")


def differing_fraction(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a != b).float().mean().item()


# ---------------------------------------------------------------------------------------------------------------
# tokens: shape, values, determinism
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("runtime_name, parallel", [("rt_t2i64", 64), ("rt_t2i16", 16)])
def test_tokens_are_binary_with_both_signs(runtime_name: str, parallel: int, request):
    rt = request.getfixturevalue(runtime_name)
    out = run(rt)
    assert rt.parallel == parallel
    assert out.tokens.shape == (1, GRID_TOKENS, CHANNELS)
    assert out.tokens.dtype == torch.int8 and out.tokens.device.type == "cpu"
    assert set(out.tokens.unique().tolist()) <= {-1, 0, 1}
    positive = (out.tokens == 1).float().mean().item()
    negative = (out.tokens == -1).float().mean().item()
    # random weights: both signs must be common, not a stray entry
    assert positive > 0.05 and negative > 0.05, (positive, negative)
    assert out.images is None
    assert (out.height, out.width) == T2I_SIZE and out.seed == SEED
    assert "tokens_s" in out.timings and "decode_s" not in out.timings


def test_same_seed_gives_identical_tokens_and_images(rt_t2i64: Runtime, baseline: torch.Tensor,
                                                     baseline_np: GenerationOutput):
    assert torch.equal(run(rt_t2i64).tokens, baseline)
    again = run(rt_t2i64, num_sampling_steps=1, output_type="np")
    assert torch.equal(again.tokens, baseline_np.tokens)
    assert np.array_equal(again.images, baseline_np.images)


def test_different_seed_gives_different_tokens(rt_t2i64: Runtime, baseline: torch.Tensor):
    other = run(rt_t2i64, seed=SEED + 1).tokens
    assert differing_fraction(other, baseline) > 0.2


def test_generator_equals_seed(rt_t2i64: Runtime, baseline: torch.Tensor):
    out = run(rt_t2i64, generator=torch.Generator().manual_seed(SEED))
    assert torch.equal(out.tokens, baseline)
    assert out.seed is None  # the seed is unknown when the caller brings a generator


def test_returned_seed_reproduces_a_seedless_run(rt_t2i64: Runtime):
    first = run(rt_t2i64, seed=None, num_sampling_steps=1)
    assert isinstance(first.seed, int) and first.seed >= 0
    again = run(rt_t2i64, seed=first.seed, num_sampling_steps=1)
    assert torch.equal(first.tokens, again.tokens)


# ---------------------------------------------------------------------------------------------------------------
# batches, guidance, negative prompts
# ---------------------------------------------------------------------------------------------------------------

def test_prompt_list_and_num_images_give_prompt_major_rows(rt_t2i64: Runtime):
    """Two prompts x two images -> 4 rows [A0, A1, B0, B1]. The noise is drawn for the whole batch at once (as
    the release draws it for its batch), so the rows are checked against the same batch written out row by row
    ([A, A, B, B], one image each), which consumes the same random numbers in the same order."""
    grouped = run(rt_t2i64, ["a cat", "a dog"], num_images=2, num_sampling_steps=1)
    spelled_out = run(rt_t2i64, ["a cat", "a cat", "a dog", "a dog"], num_images=1, num_sampling_steps=1)
    assert grouped.tokens.shape == (4, GRID_TOKENS, CHANNELS)
    assert torch.equal(grouped.tokens, spelled_out.tokens)
    image_major = run(rt_t2i64, ["a cat", "a dog", "a cat", "a dog"], num_images=1, num_sampling_steps=1)
    assert not torch.equal(grouped.tokens, image_major.tokens)
    for i in range(4):
        for j in range(i + 1, 4):
            assert differing_fraction(grouped.tokens[i], grouped.tokens[j]) > 0.2, (i, j)


def test_single_prompt_batch_is_the_releases_layout(rt_t2i64: Runtime):
    """One prompt, two images: the release's batch (conditional rows, then unconditional rows); a list of one
    prompt is the same call as the bare string."""
    as_string = run(rt_t2i64, "a cat", num_images=2, num_sampling_steps=1)
    as_list = run(rt_t2i64, ["a cat"], num_images=2, num_sampling_steps=1)
    assert as_string.tokens.shape == (2, GRID_TOKENS, CHANNELS)
    assert torch.equal(as_string.tokens, as_list.tokens)
    assert differing_fraction(as_string.tokens[0], as_string.tokens[1]) > 0.2


def test_prompt_changes_the_result(rt_t2i64: Runtime, baseline: torch.Tensor):
    other = run(rt_t2i64, "a blue whale in the sea").tokens
    assert differing_fraction(other, baseline) > 0.05


def test_negative_prompt_replaces_the_unconditional_prompt(rt_t2i64: Runtime, baseline: torch.Tensor):
    with_negative = run(rt_t2i64, negative_prompt="blurry, low quality").tokens
    assert differing_fraction(with_negative, baseline) > 0.05
    as_list = run(rt_t2i64, negative_prompt=["blurry, low quality"]).tokens
    assert torch.equal(with_negative, as_list)


def test_negative_prompt_pairs_with_its_prompt(rt_t2i64: Runtime):
    """negative_prompt[i] guides prompt[i]'s rows only: with the same batch shape (so the same noise per row),
    changing the second negative changes the second row and leaves the first row's tokens as they were."""
    both = run(rt_t2i64, ["a cat", "a dog"], negative_prompt=["blurry", "dark"], num_sampling_steps=1).tokens
    same = run(rt_t2i64, ["a cat", "a dog"], negative_prompt=["blurry", "blurry"], num_sampling_steps=1).tokens
    assert both.shape == (2, GRID_TOKENS, CHANNELS)
    assert torch.equal(both[0], same[0])
    assert differing_fraction(both[1], same[1]) > 0.05


def test_guidance_at_most_one_runs_only_conditional_rows(rt_t2i64: Runtime, baseline: torch.Tensor):
    unguided = run(rt_t2i64, guidance_scale=1.0).tokens
    assert unguided.shape == (1, GRID_TOKENS, CHANNELS)
    assert set(unguided.unique().tolist()) <= {-1, 0, 1}
    # below 1 guidance is off as well: the scale itself is never used
    assert torch.equal(run(rt_t2i64, guidance_scale=0.5).tokens, unguided)
    # without guidance there is no unconditional sequence, so a negative prompt has nothing to replace
    assert torch.equal(run(rt_t2i64, guidance_scale=1.0, negative_prompt="blurry").tokens, unguided)
    assert differing_fraction(unguided, baseline) > 0.05


def test_guidance_scale_changes_the_result(rt_t2i64: Runtime, baseline: torch.Tensor):
    assert differing_fraction(run(rt_t2i64, guidance_scale=7.5).tokens, baseline) > 0.05


# ---------------------------------------------------------------------------------------------------------------
# outputs, decoding, callback
# ---------------------------------------------------------------------------------------------------------------

def test_output_types(rt_t2i64: Runtime, baseline_np: GenerationOutput):
    height, width = T2I_SIZE
    pil = run(rt_t2i64, num_sampling_steps=1, output_type="pil")
    pt = run(rt_t2i64, num_sampling_steps=1, output_type="pt")
    tokens = run(rt_t2i64, num_sampling_steps=1, output_type="tokens")

    assert isinstance(pil.images, list) and len(pil.images) == 1
    image = pil.images[0]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (width, height)

    arr = baseline_np.images
    assert isinstance(arr, np.ndarray) and arr.dtype == np.uint8 and arr.shape == (1, height, width, 3)
    assert np.array_equal(arr[0], np.asarray(image))
    assert arr.std() > 1.0  # a decoder with random weights still gives varying pixels

    assert isinstance(pt.images, torch.Tensor) and pt.images.dtype == torch.float32
    assert pt.images.shape == (1, 3, height, width)
    assert np.array_equal(to_pixels(pt.images).numpy(), arr)

    assert tokens.images is None
    for out in (pil, pt, tokens):
        assert torch.equal(out.tokens, baseline_np.tokens)
    assert "decode_s" in pil.timings


def test_decode_tokens_reproduces_the_images(rt_t2i64: Runtime, baseline_np: GenerationOutput):
    decoded = rt_t2i64.decode_tokens(baseline_np.tokens, *T2I_SIZE, output_type="np")
    assert np.array_equal(decoded, baseline_np.images)
    as_pil = rt_t2i64.decode_tokens(baseline_np.tokens, *T2I_SIZE)
    assert np.array_equal(np.asarray(as_pil[0]), baseline_np.images[0])


@pytest.mark.parametrize("runtime_name, total", [("rt_t2i64", GRID_TOKENS // 64), ("rt_t2i16", GRID_TOKENS // 16)])
def test_callback_once_per_ar_step(runtime_name: str, total: int, request):
    rt = request.getfixturevalue(runtime_name)
    calls: list[tuple[int, int]] = []
    run(rt, num_sampling_steps=1, callback=lambda step, n: calls.append((step, n)))
    assert calls == [(k, total) for k in range(1, total + 1)]


# ---------------------------------------------------------------------------------------------------------------
# describe, other dtypes
# ---------------------------------------------------------------------------------------------------------------

def _stored_parameter_count(path, prefix: str) -> int:
    with safe_open(str(path), framework="pt") as f:
        return sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys() if k.startswith(prefix))


@pytest.mark.parametrize("runtime_name, model_dir, parallel",
                         [("rt_t2i64", "t2i64_dir", 64), ("rt_t2i16", "t2i16_dir", 16)])
def test_describe(runtime_name: str, model_dir: str, parallel: int, request):
    rt = request.getfixturevalue(runtime_name)
    directory = request.getfixturevalue(model_dir)
    info = rt.describe()
    assert info["family"] == "t2i" and info["backend"] == "reference"
    assert info["device"] == "cpu" and info["dtype"] == "float32"
    assert info["tokens_per_step"] == parallel and info["token_channels"] == CHANNELS
    assert info["head"] == {"width": 256, "blocks": 2, "kind": "trans"}
    assert info["decoder_downsample"] == 16
    assert info["backbone"] == {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2}
    shards = sorted(directory.glob("model-*.safetensors"))
    params = info["parameters"]
    assert params["backbone"] == sum(_stored_parameter_count(s, "model.") for s in shards)
    assert params["head"] == _stored_parameter_count(directory / "vision_head.safetensors", "net.")
    assert params["decoder"] == _stored_parameter_count(directory / "ae.safetensors", "decoder.")
    assert params["projector"] == _stored_parameter_count(directory / "projector.safetensors", "")


def test_bfloat16_on_cpu(t2i64_dir):
    rt = Runtime.from_pretrained(t2i64_dir, device="cpu", dtype=torch.bfloat16)
    assert rt.dtype == torch.bfloat16 and rt.describe()["dtype"] == "bfloat16"
    assert all(p.dtype == torch.bfloat16 for p in rt.model.backbone.parameters())
    out = run(rt, num_sampling_steps=1)
    assert out.tokens.shape == (1, GRID_TOKENS, CHANNELS) and out.tokens.dtype == torch.int8
    assert set(out.tokens.unique().tolist()) <= {-1, 0, 1}
    assert (out.tokens == 1).any() and (out.tokens == -1).any()


def test_dtype_given_by_name(t2i16_dir):
    rt = Runtime.from_pretrained(t2i16_dir, device="cpu", dtype="float32")
    assert rt.dtype == torch.float32 and rt.device == torch.device("cpu")


# ---------------------------------------------------------------------------------------------------------------
# a failed call leaves the runtime usable
# ---------------------------------------------------------------------------------------------------------------

class StopInCallback(Exception):
    pass


def _stop_at_step_3(step: int, total: int) -> None:
    if step == 3:
        raise StopInCallback


FAILING_CALLS = {
    "unsupported size": (dict(height=500, width=500), InvalidRequestError),
    "zero steps": (dict(num_sampling_steps=0), InvalidRequestError),
    "nan guidance": (dict(guidance_scale=float("nan")), InvalidRequestError),
    "seed and generator": (dict(generator=torch.Generator().manual_seed(1), seed=1), InvalidRequestError),
    "unknown output": (dict(output_type="jpeg"), InvalidRequestError),
    "class labels": (dict(class_labels=[1]), InvalidRequestError),
    "bad negative list": (dict(negative_prompt=["a", "b"]), InvalidRequestError),
    "callback raises mid-run": (dict(callback=_stop_at_step_3), StopInCallback),
}


@pytest.mark.parametrize("case", list(FAILING_CALLS))
def test_failed_generate_leaves_runtime_usable(case: str, rt_t2i64: Runtime, baseline: torch.Tensor):
    kwargs, error = FAILING_CALLS[case]
    with pytest.raises(error):
        args = dict(height=T2I_SIZE[0], width=T2I_SIZE[1], num_sampling_steps=STEPS, guidance_scale=GUIDANCE,
                    seed=SEED, output_type="tokens")
        args.update(kwargs)
        rt_t2i64.generate(PROMPT, **args)
    assert torch.equal(run(rt_t2i64).tokens, baseline)
