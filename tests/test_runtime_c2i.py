"""End-to-end ``Runtime`` on the tiny class-conditional models (P = 16 and P = 1, 256x256 -> 16x16 token grid).

Checks tokens and images for class labels, determinism in the seed, label-major batch rows, the release's
step-0 guidance behaviour (spec §3: the first patch comes from an unguided sample over all rows, so it does not
depend on the guidance scale), P = 1 generation, which decoder and which weights a checkpoint yields
(``vae.decoder`` without a tokenizer file; ``ema`` before ``model``), and that a failed call changes nothing.
Token comparisons are exact; parameter comparisons are exact (float32 copies of float32 files).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bitdance_rt.errors import InvalidRequestError
from bitdance_rt.outputs import GenerationOutput
from bitdance_rt.runtime import Runtime
from bitdance_rt.tiny_models import write_tiny_c2i

STEPS = 2
GUIDANCE = 4.0
SEED = 5
LABELS = [207, 360]
SIZE = 256
GRID_TOKENS = 256
CHANNELS = 32


def run(rt: Runtime, labels=LABELS, **kwargs) -> GenerationOutput:
    args = dict(num_sampling_steps=STEPS, guidance_scale=GUIDANCE, seed=SEED, output_type="tokens")
    args.update(kwargs)
    if "generator" in kwargs:
        args.pop("seed")
    return rt.generate(class_labels=labels, **args)


def differing_fraction(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a != b).float().mean().item()


def load_state(path: Path) -> dict:
    return torch.load(str(path), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def baseline(rt_c2i16: Runtime) -> torch.Tensor:
    return run(rt_c2i16).tokens


@pytest.fixture(scope="module")
def baseline_np(rt_c2i16: Runtime) -> GenerationOutput:
    return run(rt_c2i16, output_type="np")


# ---------------------------------------------------------------------------------------------------------------
# tokens and images
# ---------------------------------------------------------------------------------------------------------------

def test_tokens_are_binary_with_both_signs(rt_c2i16: Runtime, baseline: torch.Tensor):
    assert rt_c2i16.parallel == 16
    assert baseline.shape == (2, GRID_TOKENS, CHANNELS) and baseline.dtype == torch.int8
    assert set(baseline.unique().tolist()) <= {-1, 0, 1}
    for sign in (1, -1):
        assert (baseline == sign).float().mean().item() > 0.05
    assert differing_fraction(baseline[0], baseline[1]) > 0.2


def test_same_seed_identical_and_other_seed_different(rt_c2i16: Runtime, baseline: torch.Tensor,
                                                      baseline_np: GenerationOutput):
    assert torch.equal(run(rt_c2i16).tokens, baseline)
    again = run(rt_c2i16, output_type="np")
    assert np.array_equal(again.images, baseline_np.images)
    assert torch.equal(baseline_np.tokens, baseline)
    assert differing_fraction(run(rt_c2i16, seed=SEED + 1).tokens, baseline) > 0.2


def test_generator_equals_seed(rt_c2i16: Runtime, baseline: torch.Tensor):
    out = run(rt_c2i16, generator=torch.Generator().manual_seed(SEED))
    assert torch.equal(out.tokens, baseline) and out.seed is None


def test_returned_seed_reproduces_a_seedless_run(rt_c2i16: Runtime):
    first = run(rt_c2i16, seed=None)
    assert isinstance(first.seed, int)
    assert torch.equal(run(rt_c2i16, seed=first.seed).tokens, first.tokens)


def test_label_changes_the_result(rt_c2i16: Runtime, baseline: torch.Tensor):
    other = run(rt_c2i16, labels=[208, 360]).tokens
    assert differing_fraction(other[0], baseline[0]) > 0.05


def test_num_images_gives_label_major_rows(rt_c2i16: Runtime):
    grouped = run(rt_c2i16, num_images=2, num_sampling_steps=1).tokens
    spelled_out = run(rt_c2i16, labels=[207, 207, 360, 360], num_sampling_steps=1).tokens
    assert grouped.shape == (4, GRID_TOKENS, CHANNELS)
    assert torch.equal(grouped, spelled_out)
    assert differing_fraction(grouped[0], grouped[1]) > 0.2


def test_single_int_label(rt_c2i16: Runtime):
    as_int = run(rt_c2i16, labels=207, num_sampling_steps=1).tokens
    as_list = run(rt_c2i16, labels=[207], num_sampling_steps=1).tokens
    assert as_int.shape == (1, GRID_TOKENS, CHANNELS) and torch.equal(as_int, as_list)


def test_default_guidance_of_an_unreleased_shape(rt_c2i16: Runtime):
    """The tiny model's (width, layers, P) is none of the release's, so the default guidance is the fallback."""
    assert rt_c2i16.family.default_guidance == 4.0
    assert torch.equal(run(rt_c2i16, guidance_scale=None).tokens, run(rt_c2i16, guidance_scale=4.0).tokens)


def test_output_types_and_decode(rt_c2i16: Runtime, baseline_np: GenerationOutput):
    arr = baseline_np.images
    assert arr.dtype == np.uint8 and arr.shape == (2, SIZE, SIZE, 3) and arr.std() > 1.0
    pil = run(rt_c2i16, output_type="pil")
    assert len(pil.images) == 2
    for k, image in enumerate(pil.images):
        assert isinstance(image, Image.Image) and image.size == (SIZE, SIZE)
        assert np.array_equal(np.asarray(image), arr[k])
    pt = run(rt_c2i16, output_type="pt")
    assert pt.images.shape == (2, 3, SIZE, SIZE) and pt.images.dtype == torch.float32
    decoded = rt_c2i16.decode_tokens(baseline_np.tokens, SIZE, SIZE, output_type="np")
    assert np.array_equal(decoded, arr)
    assert (baseline_np.height, baseline_np.width) == (SIZE, SIZE)


def test_explicit_size_256_is_accepted(rt_c2i16: Runtime, baseline: torch.Tensor):
    assert torch.equal(run(rt_c2i16, height=SIZE, width=SIZE).tokens, baseline)


# ---------------------------------------------------------------------------------------------------------------
# guidance schedule (spec §3)
# ---------------------------------------------------------------------------------------------------------------

def test_first_patch_is_unguided(rt_c2i16: Runtime):
    """Guidance grows from exactly 1.0 at step 0, where the release samples every row unguided: patch 0 (the
    first P = 16 tokens of each row) is the same for any guidance > 1 with the same seed; later patches differ."""
    p = rt_c2i16.parallel
    low = run(rt_c2i16, guidance_scale=2.0).tokens
    high = run(rt_c2i16, guidance_scale=5.0).tokens
    assert torch.equal(low[:, :p], high[:, :p])
    for row in range(len(LABELS)):
        assert differing_fraction(low[row, p:], high[row, p:]) > 0.05, row


def test_unguided_run(rt_c2i16: Runtime):
    unguided = run(rt_c2i16, guidance_scale=1.0).tokens
    assert unguided.shape == (2, GRID_TOKENS, CHANNELS)
    assert torch.equal(run(rt_c2i16, guidance_scale=0.3).tokens, unguided)


def test_callback_once_per_ar_step(rt_c2i16: Runtime):
    calls: list[tuple[int, int]] = []
    run(rt_c2i16, num_sampling_steps=1, callback=lambda step, n: calls.append((step, n)))
    assert calls == [(k, 16) for k in range(1, 17)]


# ---------------------------------------------------------------------------------------------------------------
# P = 1
# ---------------------------------------------------------------------------------------------------------------

def test_p1_model(rt_c2i1: Runtime):
    """P = 1: one token per AR step (256 steps), ResBlock head; one run with one sampling step."""
    assert rt_c2i1.parallel == 1
    info = rt_c2i1.describe()
    assert info["head"]["kind"] == "res" and info["tokens_per_step"] == 1
    calls: list[tuple[int, int]] = []
    out = rt_c2i1.generate(class_labels=[207], num_sampling_steps=1, guidance_scale=GUIDANCE, seed=SEED,
                           output_type="np", callback=lambda step, n: calls.append((step, n)))
    assert calls == [(k, 256) for k in range(1, 257)]
    assert out.tokens.shape == (1, GRID_TOKENS, CHANNELS)
    assert set(out.tokens.unique().tolist()) <= {-1, 0, 1}
    assert (out.tokens == 1).any() and (out.tokens == -1).any()
    assert out.images.shape == (1, SIZE, SIZE, 3)


# ---------------------------------------------------------------------------------------------------------------
# what the loader takes from the files
# ---------------------------------------------------------------------------------------------------------------

def test_describe(rt_c2i16: Runtime, c2i16_files):
    info = rt_c2i16.describe()
    assert info["family"] == "c2i" and info["backend"] == "reference"
    assert info["device"] == "cpu" and info["dtype"] == "float32"
    assert info["tokens_per_step"] == 16 and info["token_channels"] == CHANNELS
    assert info["head"] == {"width": 128, "blocks": 2, "kind": "trans"}
    assert info["backbone"] == {"hidden": 64, "layers": 2, "heads": 1}
    assert info["decoder_downsample"] == 16
    state = load_state(c2i16_files[0])["ema"]
    tokenizer_state = load_state(c2i16_files[1])["state_dict"]
    params = info["parameters"]
    assert params["head"] == sum(v.numel() for k, v in state.items() if k.startswith("head."))
    assert params["backbone"] == sum(v.numel() for k, v in state.items() if not k.startswith(("head.", "vae.")))
    assert params["decoder"] == sum(v.numel() for k, v in tokenizer_state.items() if k.startswith("decoder."))


def _assert_module_holds(module: torch.nn.Module, state: dict, prefix: str) -> None:
    loaded = module.state_dict()
    expected = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value.float()), key


def test_decoder_from_checkpoint_when_no_tokenizer_file(c2i16_files, rt_c2i16: Runtime,
                                                        baseline_np: GenerationOutput):
    model_path, tokenizer_path = c2i16_files
    rt = Runtime.from_pretrained(model_path, device="cpu", dtype=torch.float32)
    state = load_state(model_path)["ema"]
    tokenizer_state = load_state(tokenizer_path)["state_dict"]
    _assert_module_holds(rt.model.decoder, state, "vae.decoder.")
    _assert_module_holds(rt_c2i16.model.decoder, tokenizer_state, "decoder.")
    assert not torch.equal(state["vae.decoder.conv_in.weight"], tokenizer_state["decoder.conv_in.weight"])
    out = run(rt, output_type="np")
    # same backbone and head: same tokens; another decoder: other pixels
    assert torch.equal(out.tokens, baseline_np.tokens)
    assert not np.array_equal(out.images, baseline_np.images)


def test_ema_is_preferred_over_model(tmp_path: Path, baseline: torch.Tensor):
    """A checkpoint with both entries (different draws) loads ``ema``, in either order of the entries; a
    checkpoint with ``model`` only loads that."""
    model_path, tokenizer_path = write_tiny_c2i(tmp_path, parallel_num=16, seed=0, entry="both")
    both = load_state(model_path)
    ema, model = both["ema"], both["model"]
    assert not torch.equal(ema["norm.weight"], model["norm.weight"])

    model_first = tmp_path / "model_first.pt"
    torch.save({"model": model, "ema": ema}, model_first)
    model_only = tmp_path / "model_only.pt"
    torch.save({"model": model}, model_only)

    for path in (model_path, model_first):
        rt = Runtime.from_pretrained(path, device="cpu", tokenizer_path=tokenizer_path)
        _assert_module_holds(rt.model.backbone, {k: v for k, v in ema.items() if not k.startswith(("head.", "vae."))},
                             "")
        _assert_module_holds(rt.model.head, ema, "head.net.")
        # the same seed-0 draw as the session's P = 16 model: the same tokens
        assert torch.equal(run(rt).tokens, baseline)

    rt = Runtime.from_pretrained(model_only, device="cpu", tokenizer_path=tokenizer_path)
    _assert_module_holds(rt.model.head, model, "head.net.")
    assert differing_fraction(run(rt).tokens, baseline) > 0.05


# ---------------------------------------------------------------------------------------------------------------
# a failed call leaves the runtime usable
# ---------------------------------------------------------------------------------------------------------------

class StopInCallback(Exception):
    pass


def _stop_at_step_2(step: int, total: int) -> None:
    if step == 2:
        raise StopInCallback


FAILING_CALLS = {
    "label 1000": (dict(class_labels=[207, 1000]), InvalidRequestError),
    "size 512": (dict(height=512, width=512), InvalidRequestError),
    "prompt": (dict(prompt="a cat"), InvalidRequestError),
    "inf guidance": (dict(guidance_scale=float("inf")), InvalidRequestError),
    "zero images": (dict(num_images=0), InvalidRequestError),
    "callback raises mid-run": (dict(callback=_stop_at_step_2), StopInCallback),
}


@pytest.mark.parametrize("case", list(FAILING_CALLS))
def test_failed_generate_leaves_runtime_usable(case: str, rt_c2i16: Runtime, baseline: torch.Tensor):
    kwargs, error = FAILING_CALLS[case]
    args = dict(class_labels=LABELS, num_sampling_steps=STEPS, guidance_scale=GUIDANCE, seed=SEED,
                output_type="tokens")
    args.update(kwargs)
    with pytest.raises(error):
        rt_c2i16.generate(**args)
    assert torch.equal(run(rt_c2i16).tokens, baseline)
