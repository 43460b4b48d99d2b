"""``BitDancePipeline`` on the tiny models (CPU, reference backend): every output_type equals ``Runtime.generate``
for the same seed, bit for bit, in diffusers' meanings; lists of prompts run as one batch; a list of generators
gives each image its own; step callbacks get diffusers' arguments and can stop the call; ``return_dict=False``;
loading the diffusers port's layouts; ``to(dtype)``; the model offload's two stages give the same images."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers", reason="the diffusers extra is not installed (pip install -e '.[test]')")

from diffusers import DiffusionPipeline  # noqa: E402
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput  # noqa: E402

from bitdance_rt import BitDancePipeline, Runtime  # noqa: E402
from bitdance_rt.errors import CheckpointError, InvalidRequestError  # noqa: E402
from bitdance_rt.tiny_models import write_tiny_c2i, write_tiny_t2i  # noqa: E402
from port_writer import write_c2i_port, write_t2i_port  # noqa: E402

T2I = dict(height=512, width=512, num_inference_steps=1, guidance_scale=4.0)
C2I = dict(num_inference_steps=1, guidance_scale=3.0)
REPO = Path(__file__).resolve().parents[2]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def t2i_pipe(rt_t2i64, single_thread):
    pipe = BitDancePipeline(rt_t2i64)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def c2i_pipe(rt_c2i16, single_thread):
    pipe = BitDancePipeline(rt_c2i16)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_is_a_diffusion_pipeline(t2i_pipe, rt_t2i64):
    assert isinstance(t2i_pipe, DiffusionPipeline)
    assert t2i_pipe.components == {"runtime": rt_t2i64}
    assert t2i_pipe.device == torch.device("cpu") and t2i_pipe.dtype == torch.float32
    assert t2i_pipe.family.condition_field == "prompt"


def test_every_output_type_equals_generate(c2i_pipe, rt_c2i16):
    ref = rt_c2i16.generate(class_labels=[3, 7], num_sampling_steps=1, guidance_scale=3.0, seed=11, output_type="pt")
    ref_pil = rt_c2i16.generate(class_labels=[3, 7], num_sampling_steps=1, guidance_scale=3.0, seed=11).images
    unit = (ref.images * 0.5 + 0.5).clamp(0, 1)

    pt = c2i_pipe(class_labels=[3, 7], generator=gen(11), output_type="pt", **C2I).images
    assert pt.shape == (2, 3, 256, 256) and pt.dtype == torch.float32
    assert torch.equal(pt, unit) and 0.0 <= pt.min() and pt.max() <= 1.0
    np_images = c2i_pipe([3, 7], generator=gen(11), output_type="np", **C2I).images  # labels as the first argument
    assert isinstance(np_images, np.ndarray) and np_images.dtype == np.float32 and np_images.shape == (2, 256, 256, 3)
    assert np.array_equal(np_images, unit.permute(0, 2, 3, 1).numpy())
    pil = c2i_pipe(class_labels=[3, 7], generator=gen(11), **C2I).images
    assert [np.asarray(p).tolist() == np.asarray(q).tolist() for p, q in zip(pil, ref_pil)] == [True, True]
    latent = c2i_pipe(class_labels=[3, 7], generator=gen(11), output_type="latent", **C2I).images
    assert latent.dtype == torch.int8 and torch.equal(latent, ref.tokens)
    assert torch.equal(rt_c2i16.decode_tokens(latent, 256, 256, output_type="pt"), ref.images)


def test_prompt_list_is_one_generate_batch(t2i_pipe, rt_t2i64, monkeypatch):
    calls = []
    real = rt_t2i64.generate
    monkeypatch.setattr(rt_t2i64, "generate", lambda *a, **k: calls.append(k) or real(*a, **k))
    prompts = ["a red fox", "two cats on a sofa"]
    out = t2i_pipe(prompts, negative_prompt=["blurry", "dark"], num_images_per_prompt=2, generator=gen(5),
                   output_type="latent", **T2I)
    assert len(calls) == 1 and calls[0]["prompt"] == prompts and calls[0]["num_images"] == 2
    expected = real(prompts, negative_prompt=["blurry", "dark"], num_images=2, height=512, width=512,
                    num_sampling_steps=1, guidance_scale=4.0, seed=5, output_type="tokens")
    assert out.images.shape == (4, 1024, 32) and torch.equal(out.images, expected.tokens)


def test_list_of_generators_gives_each_image_its_own(t2i_pipe):
    prompts = ["a red fox", "two cats on a sofa"]
    both = t2i_pipe(prompts, generator=[gen(1), gen(2)], output_type="latent", **T2I).images
    alone = [t2i_pipe(p, generator=gen(s), output_type="latent", **T2I).images[0] for p, s in zip(prompts, (1, 2))]
    assert torch.equal(both[0], alone[0]) and torch.equal(both[1], alone[1])
    assert not torch.equal(both[0], t2i_pipe(prompts[0], generator=gen(2), output_type="latent", **T2I).images[0])
    with pytest.raises(InvalidRequestError, match="list of generators of length 3"):
        t2i_pipe(prompts, generator=[gen(1), gen(2), gen(3)], output_type="latent", **T2I)


def test_return_dict_false_gives_a_tuple(t2i_pipe):
    out = t2i_pipe("a fox", generator=gen(0), output_type="latent", return_dict=False, **T2I)
    assert isinstance(out, tuple) and len(out) == 1 and out[0].shape == (1, 1024, 32)
    assert isinstance(t2i_pipe("a fox", generator=gen(0), output_type="latent", **T2I), ImagePipelineOutput)


def test_step_callback_gets_diffusers_arguments(t2i_pipe):
    seen = []

    def callback(pipe, i, t, kwargs):
        seen.append((pipe, i, t, kwargs))
        return kwargs

    t2i_pipe("a fox", generator=gen(0), output_type="latent", callback_on_step_end=callback,
             callback_on_step_end_tensor_inputs=[], **T2I)
    assert [i for _, i, _, _ in seen] == list(range(16))  # 512x512 at 64 tokens per step: 16 AR steps
    assert [int(t) for _, _, t, _ in seen] == list(range(15, -1, -1))
    assert all(p is t2i_pipe and isinstance(t, torch.Tensor) and kw == {} for p, _, t, kw in seen)
    with pytest.raises(InvalidRequestError, match="no tensors to hand"):
        t2i_pipe("a fox", output_type="latent", callback_on_step_end=callback,
                 callback_on_step_end_tensor_inputs=["latents"], **T2I)


def test_callback_can_stop_the_call(t2i_pipe):
    steps = []

    def stop_at_three(pipe, i, t, kwargs):
        steps.append(i)
        if i == 2:
            pipe._interrupt = True
        return kwargs

    out = t2i_pipe(["a fox", "a cat"], generator=gen(0), output_type="np", callback_on_step_end=stop_at_three, **T2I)
    assert steps == [0, 1, 2] and t2i_pipe.interrupt
    assert out.images.shape == (0, 512, 512, 3)
    again = t2i_pipe("a fox", generator=gen(0), output_type="latent", **T2I)  # the next call starts afresh
    assert again.images.shape == (1, 1024, 32) and not t2i_pipe.interrupt


def test_bad_arguments_are_refused_with_the_reason(t2i_pipe, c2i_pipe):
    with pytest.raises(InvalidRequestError, match="does not take prompt_embeds"):
        t2i_pipe(prompt_embeds=torch.zeros(1))
    with pytest.raises(InvalidRequestError, match="output_type='latents'"):
        t2i_pipe("a fox", output_type="latents")
    with pytest.raises(InvalidRequestError, match="not a supported size"):
        t2i_pipe("a fox", height=500, width=500, output_type="latent")
    with pytest.raises(InvalidRequestError, match="takes class_labels"):
        c2i_pipe("a dog", **C2I)


def test_loads_the_diffusers_port_t2i_layout(t2i64_dir, rt_t2i64, tmp_path, single_thread, monkeypatch):
    port = write_t2i_port(t2i64_dir, tmp_path / "BitDance-tiny-diffusers", shard_head=True)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the loader's temporary view goes
    pipe = BitDancePipeline.from_pretrained(port, torch_dtype=torch.float32, device="cpu",
                                            trust_remote_code=True)
    assert pipe.runtime.describe()["tokens_per_step"] == 64
    ours = pipe("a fox", generator=gen(4), output_type="latent", **T2I).images
    ref = rt_t2i64.generate("a fox", height=512, width=512, num_sampling_steps=1, guidance_scale=4.0, seed=4,
                            output_type="tokens")
    assert torch.equal(ours, ref.tokens)
    assert list(scratch.iterdir()) == []  # the view is gone after loading


def test_loads_the_diffusers_port_c2i_layout(c2i16_files, rt_c2i16, tmp_path, single_thread):
    checkpoint, tokenizer = c2i16_files
    root = tmp_path / "BitDance-ImageNet-diffusers"
    write_c2i_port(checkpoint, tokenizer, root / "BitDance_tiny_16x", parallel_num=16)
    with pytest.raises(CheckpointError, match="subfolder='BitDance_tiny_16x'"):
        BitDancePipeline.from_pretrained(root, device="cpu")
    pipe = BitDancePipeline.from_pretrained(root, subfolder="BitDance_tiny_16x", torch_dtype=torch.float32,
                                            device="cpu")
    out = pipe(class_labels=[5], generator=gen(9), output_type="pt", **C2I).images
    ref = rt_c2i16.generate(class_labels=[5], num_sampling_steps=1, guidance_scale=3.0, seed=9, output_type="pt")
    assert torch.equal(out, (ref.images * 0.5 + 0.5).clamp(0, 1))


def test_load_errors_say_what_to_do(tmp_path):
    with pytest.raises(CheckpointError, match="reads no Hub repository"):
        BitDancePipeline.from_pretrained("BiliSakura/BitDance-14B-64x-diffusers")
    with pytest.raises(InvalidRequestError, match="quantization='int4' is unknown; choose one of None, 'fp8', 'int8'"):
        BitDancePipeline.from_pretrained(tmp_path, quantization="int4")
    with pytest.raises(InvalidRequestError, match="unknown argument.*revision"):
        BitDancePipeline.from_pretrained(tmp_path, revision="main")


def test_to_dtype_rebuilds_the_runtime(tmp_path, single_thread):
    model, tokenizer = write_tiny_c2i(tmp_path, parallel_num=16, seed=3)
    pipe = BitDancePipeline.from_pretrained(model, tokenizer_path=tokenizer, device="cpu")
    first = pipe.runtime
    assert pipe.to("cpu") is pipe and pipe.runtime is first  # already there: nothing rebuilt
    assert pipe.to(torch.bfloat16) is pipe
    assert pipe.dtype == torch.bfloat16 and pipe.runtime is not first and pipe.runtime.dtype == torch.bfloat16
    assert {p.dtype for m in pipe.family.modules().values() for p in m.parameters()} == {torch.bfloat16}
    pipe.set_progress_bar_config(disable=True)
    tokens = pipe(class_labels=1, generator=gen(0), output_type="latent", **C2I).images
    assert tokens.shape == (1, 256, 32)
    assert pipe.to("cpu", dtype=torch.float32).dtype == torch.float32


def test_model_offload_stages_give_the_same_images(tmp_path, single_thread):
    """A GAN decoder draws noise too, so this also checks that both stages share the call's generator."""
    directory = write_tiny_t2i(tmp_path / "gan", parallel_num=64, seed=5, gan_decoder=True)
    plain = BitDancePipeline(Runtime.from_pretrained(directory, device="cpu", dtype=torch.float32))
    offloaded = BitDancePipeline(Runtime.from_pretrained(directory, device="cpu", dtype=torch.float32))
    offloaded.enable_model_cpu_offload(device="cpu")
    for pipe in (plain, offloaded):
        pipe.set_progress_bar_config(disable=True)
    a = plain("a fox", generator=gen(8), output_type="pt", **T2I).images
    b = offloaded("a fox", generator=gen(8), output_type="pt", **T2I).images
    assert offloaded.device == torch.device("cpu") and torch.equal(a, b)


def test_import_does_not_need_diffusers():
    import bitdance_rt

    assert bitdance_rt.BitDancePipeline is BitDancePipeline
    code = "import sys, bitdance_rt; assert 'diffusers' not in sys.modules, 'import bitdance_rt imported diffusers'"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
