"""Every kind of bad input gets the runtime's own error class and a message that names the problem.

Files: a missing, truncated or unreadable part; a renamed key (message names file and key); a wrong shape
(key, expected, found); a shard listed in the index but absent; a tokenizer without a needed special token; a
pickle that needs more than ``weights_only`` (refused unless ``trust_pickle=True``). Arguments: sizes, P that does
not tile the grid, class labels, steps, guidance, prompts, devices, dtypes, seeds, output types, the family's
inputs, the backend. Damaged files are made in per-test copies of the tiny models.
"""

from __future__ import annotations

import argparse
import json
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from bitdance_rt.errors import BitDanceError, CheckpointError, InvalidRequestError, UnsupportedDeviceError
from bitdance_rt.loading.t2i_checkpoint import REQUIRED_FILES
from bitdance_rt.runtime import Runtime
from bitdance_rt.sizes import T2I_SIZES, format_sizes, token_grid

T2I_ARGS = dict(height=512, width=512, num_sampling_steps=1, guidance_scale=4.0, seed=0, output_type="tokens")
C2I_ARGS = dict(num_sampling_steps=1, guidance_scale=4.0, seed=0, output_type="tokens")


@contextmanager
def raises(error: type[BitDanceError], *parts: str):
    """The block raises ``error`` whose message contains every one of ``parts``."""
    with pytest.raises(error) as info:
        yield info
    message = str(info.value)
    for part in parts:
        assert part in message, f"{part!r} not in error message: {message}"


def truncate(path: Path, fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])


def rewrite_safetensors(path: Path, edit) -> None:
    """Read every tensor of ``path``, apply ``edit(dict)`` in place, write the file back."""
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    edit(tensors)
    save_file(tensors, str(path), metadata=metadata)


def load_t2i(directory: Path) -> Runtime:
    return Runtime.from_pretrained(directory, device="cpu")


# ---------------------------------------------------------------------------------------------------------------
# text-to-image files
# ---------------------------------------------------------------------------------------------------------------

SHARD_1 = "model-00001-of-00002.safetensors"
INDEX = "model.safetensors.index.json"


@pytest.mark.parametrize("name", [*REQUIRED_FILES, SHARD_1, INDEX])
def test_missing_t2i_file(t2i_copy: Path, name: str):
    (t2i_copy / name).unlink()
    with raises(CheckpointError, name):
        load_t2i(t2i_copy)


@pytest.mark.parametrize("name", [SHARD_1, "vision_head.safetensors", "ae.safetensors", "projector.safetensors"])
def test_truncated_safetensors(t2i_copy: Path, name: str):
    truncate(t2i_copy / name)
    with raises(CheckpointError, name, "truncated"):
        load_t2i(t2i_copy)


@pytest.mark.parametrize("name", ["config.json", "vision_head_config.json", "ae_config.json", INDEX])
def test_truncated_json(t2i_copy: Path, name: str):
    truncate(t2i_copy / name)
    with raises(CheckpointError, name):
        load_t2i(t2i_copy)


def test_truncated_tokenizer(t2i_copy: Path):
    truncate(t2i_copy / "tokenizer.json")
    with raises(CheckpointError, "tokenizer.json"):
        load_t2i(t2i_copy)


def test_renamed_key_in_single_file(t2i_copy: Path):
    rewrite_safetensors(t2i_copy / "vision_head.safetensors",
                        lambda t: t.update({"net.input_projection.weight": t.pop("net.input_proj.weight")}))
    with raises(CheckpointError, "vision_head.safetensors", "input_proj.weight", "missing"):
        load_t2i(t2i_copy)


def test_renamed_key_in_shard_and_index(t2i_copy: Path):
    old, new = "model.norm.weight", "model.final_norm.weight"
    index = json.loads((t2i_copy / INDEX).read_text())
    shard = index["weight_map"].pop(old)
    index["weight_map"][new] = shard
    (t2i_copy / INDEX).write_text(json.dumps(index))
    rewrite_safetensors(t2i_copy / shard, lambda t: t.update({new: t.pop(old)}))
    with raises(CheckpointError, "norm.weight", "missing", "model-0000"):
        load_t2i(t2i_copy)


def test_key_listed_in_index_but_absent_from_shard(t2i_copy: Path):
    index = json.loads((t2i_copy / INDEX).read_text())
    shard = index["weight_map"]["model.norm.weight"]
    rewrite_safetensors(t2i_copy / shard, lambda t: t.pop("model.norm.weight"))
    with raises(CheckpointError, shard, "model.norm.weight"):
        load_t2i(t2i_copy)


def test_wrong_shape(t2i_copy: Path):
    def shrink(tensors):
        tensors["fc1.weight"] = tensors["fc1.weight"][:, :31].contiguous()
    rewrite_safetensors(t2i_copy / "projector.safetensors", shrink)
    with raises(CheckpointError, "projector.safetensors", "fc1.weight", "[64, 31]", "[64, 32]"):
        load_t2i(t2i_copy)


def test_wrong_shape_in_backbone_shard(t2i_copy: Path):
    index = json.loads((t2i_copy / INDEX).read_text())
    key = "model.layers.0.mlp.gate_proj.weight"
    shard = index["weight_map"][key]

    def grow(tensors):
        tensors[key] = torch.cat([tensors[key], tensors[key][:1]])
    rewrite_safetensors(t2i_copy / shard, grow)
    with raises(CheckpointError, shard, "layers.0.mlp.gate_proj.weight", "[97, 64]", "[96, 64]"):
        load_t2i(t2i_copy)


def test_unexpected_key(t2i_copy: Path):
    rewrite_safetensors(t2i_copy / "projector.safetensors", lambda t: t.update({"fc3.weight": torch.ones(2, 2)}))
    with raises(CheckpointError, "projector.safetensors", "fc3.weight"):
        load_t2i(t2i_copy)


def test_shard_listed_in_index_is_missing(t2i_copy: Path):
    index = json.loads((t2i_copy / INDEX).read_text())
    index["weight_map"]["model.norm.weight"] = "model-00003-of-00003.safetensors"
    (t2i_copy / INDEX).write_text(json.dumps(index))
    with raises(CheckpointError, "model-00003-of-00003.safetensors", "missing"):
        load_t2i(t2i_copy)


def _drop_added_token(directory: Path, token: str) -> None:
    path = directory / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    before = len(data["added_tokens"])
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != token]
    assert len(data["added_tokens"]) == before - 1
    path.write_text(json.dumps(data), encoding="utf-8")


@pytest.mark.parametrize("token", ["<|vision_start|>", "<|query_40|>", "<|res_32|>", "<|im_start|>"])
def test_tokenizer_without_special_token(t2i_copy: Path, token: str):
    _drop_added_token(t2i_copy, token)
    with raises(CheckpointError, token, "tokenizer.json"):
        load_t2i(t2i_copy)


def _set_parallel(directory: Path, parallel: int) -> None:
    path = directory / "vision_head_config.json"
    cfg = json.loads(path.read_text())
    cfg["parallel_num"] = parallel
    path.write_text(json.dumps(cfg))


def test_non_square_parallel_is_refused(t2i_copy: Path):
    _set_parallel(t2i_copy, 8)
    with raises(CheckpointError, "vision_head_config.json", "P = 8", "square"):
        load_t2i(t2i_copy)


def test_query_tokens_beyond_the_tokenizer(t2i_copy: Path):
    """P = 256 needs <|query_64|>..<|query_255|>, which the tokenizer does not have."""
    _set_parallel(t2i_copy, 256)
    with raises(CheckpointError, "<|query_64|>", "tokenizer.json"):
        load_t2i(t2i_copy)


def test_parallel_that_does_not_tile_the_grid(t2i_copy: Path):
    """P = 9 (3x3 patches) loads, but no supported size has a token grid whose sides are multiples of 3."""
    _set_parallel(t2i_copy, 9)
    rt = load_t2i(t2i_copy)
    assert rt.parallel == 9
    with raises(InvalidRequestError, "P = 9", "32x32", "512x512"):
        rt.generate("a cat", **T2I_ARGS)


def test_token_grid_checks():
    assert token_grid(512, 512, 16, 64) == (32, 32)
    assert token_grid(640, 384, 16, 64) == (40, 24)
    # every supported size tiles with P = 64 at downsampling 16, so a larger P shows the check
    with raises(InvalidRequestError, "P = 256", "40x24", "640x384"):
        token_grid(640, 384, 16, 256)
    with raises(InvalidRequestError, "500x512", "16"):
        token_grid(500, 512, 16, 64)


def test_unsupported_size_lists_the_supported_ones(rt_t2i64: Runtime):
    with raises(InvalidRequestError, "500x500", format_sizes(T2I_SIZES)):
        rt_t2i64.generate("a cat", **{**T2I_ARGS, "height": 500, "width": 500})
    # a size that exists only with height and width swapped is not in the list either
    with raises(InvalidRequestError, "256x384"):
        rt_t2i64.generate("a cat", **{**T2I_ARGS, "height": 256, "width": 384})


def test_not_a_model_path(tmp_path: Path):
    with raises(CheckpointError, "does not exist"):
        Runtime.from_pretrained(tmp_path / "nowhere", device="cpu")
    with raises(CheckpointError, "config.json"):
        Runtime.from_pretrained(tmp_path, device="cpu")


def test_tokenizer_path_with_t2i(t2i64_dir: Path, c2i16_files):
    with raises(InvalidRequestError, "tokenizer_path"):
        Runtime.from_pretrained(t2i64_dir, device="cpu", tokenizer_path=c2i16_files[1])


# ---------------------------------------------------------------------------------------------------------------
# class-conditional files
# ---------------------------------------------------------------------------------------------------------------

def load_c2i(model: Path, tokenizer: Path | None, **kwargs) -> Runtime:
    return Runtime.from_pretrained(model, device="cpu", tokenizer_path=tokenizer, **kwargs)


@pytest.mark.parametrize("which", [0, 1])
def test_truncated_pt(c2i_copy, which: int):
    truncate(c2i_copy[which])
    with raises(CheckpointError, c2i_copy[which].name, "truncated"):
        load_c2i(*c2i_copy)


def test_missing_tokenizer_file(c2i_copy):
    c2i_copy[1].unlink()
    with raises(CheckpointError, c2i_copy[1].name):
        load_c2i(*c2i_copy)


def _edit_checkpoint(path: Path, edit) -> None:
    ckpt = torch.load(str(path), weights_only=True)
    edit(ckpt["ema"])
    torch.save(ckpt, path)


def test_c2i_renamed_key(c2i_copy):
    _edit_checkpoint(c2i_copy[0], lambda s: s.update({"layers.1.ffn_norm.scale": s.pop("layers.1.ffn_norm.weight")}))
    with raises(CheckpointError, c2i_copy[0].name, "layers.1.ffn_norm.weight"):
        load_c2i(*c2i_copy)


def test_c2i_wrong_shape(c2i_copy):
    def shrink(state):
        state["head.net.final_layer.linear.weight"] = state["head.net.final_layer.linear.weight"][:31].clone()
    _edit_checkpoint(c2i_copy[0], shrink)
    with raises(CheckpointError, c2i_copy[0].name, "final_layer.linear.weight", "[31, 128]", "[32, 128]"):
        load_c2i(*c2i_copy)


def test_c2i_tokenizer_wrong_shape(c2i_copy):
    tok = torch.load(str(c2i_copy[1]), weights_only=True)
    tok["state_dict"]["decoder.conv_out.weight"] = tok["state_dict"]["decoder.conv_out.weight"][:, :16].clone()
    torch.save(tok, c2i_copy[1])
    with raises(CheckpointError, c2i_copy[1].name, "conv_out.weight"):
        load_c2i(*c2i_copy)


def test_c2i_without_model_entries(tmp_path: Path, c2i16_files):
    path = tmp_path / "weights.pt"
    torch.save({"optimizer": {"lr": torch.tensor(1.0)}}, path)
    with raises(CheckpointError, "weights.pt", "'ema' or 'model'"):
        load_c2i(path, c2i16_files[1])
    torch.save(torch.zeros(3), path)
    with raises(CheckpointError, "weights.pt", "dict"):
        load_c2i(path, c2i16_files[1])


def test_c2i_tokenizer_without_state_dict(tmp_path: Path, c2i16_files):
    path = tmp_path / "ae.pt"
    torch.save({"weights": {}}, path)
    with raises(CheckpointError, "ae.pt", "state_dict"):
        load_c2i(c2i16_files[0], path)


def test_c2i_without_any_decoder(tmp_path: Path, c2i16_files):
    ckpt = torch.load(str(c2i16_files[0]), weights_only=True)
    ckpt["ema"] = {k: v for k, v in ckpt["ema"].items() if not k.startswith("vae.")}
    path = tmp_path / "no_vae.pt"
    torch.save(ckpt, path)
    with raises(CheckpointError, "no_vae.pt", "tokenizer_path"):
        load_c2i(path, None)


class PlainStateDict(OrderedDict):
    """A harmless ``OrderedDict`` subclass: not on torch's ``weights_only`` allow-list."""


def test_pickle_beyond_weights_needs_trust(tmp_path: Path, c2i16_files, rt_c2i16: Runtime):
    ckpt = torch.load(str(c2i16_files[0]), weights_only=True)
    path = tmp_path / "custom.pt"
    torch.save({"ema": PlainStateDict(ckpt["ema"])}, path)
    with raises(CheckpointError, "custom.pt", "trust_pickle=True"):
        load_c2i(path, c2i16_files[1])
    rt = load_c2i(path, c2i16_files[1], trust_pickle=True)
    expected = rt_c2i16.generate(class_labels=[3], **C2I_ARGS).tokens
    assert torch.equal(rt.generate(class_labels=[3], **C2I_ARGS).tokens, expected)


def test_training_format_checkpoint_with_args_namespace(tmp_path: Path, c2i16_files, rt_c2i16: Runtime):
    """The release's trainer saves {"model", "optimizer", "epochs", "args": argparse.Namespace, "ema"}
    (imagenet_gen/train_parallel.py). The Namespace is plain data and allow-listed, so such a file loads with
    weights_only=True, and `ema` wins over `model`."""
    ckpt = torch.load(str(c2i16_files[0]), weights_only=True)
    path = tmp_path / "epoch_1.pt"
    torch.save({"model": {k: v + 1 for k, v in ckpt["ema"].items()}, "optimizer": {"state": {}, "param_groups": []},
                "epochs": 1, "args": argparse.Namespace(ema=0.9999, lr=1e-4), "ema": ckpt["ema"]}, path)
    rt = load_c2i(path, c2i16_files[1])
    expected = rt_c2i16.generate(class_labels=[3], **C2I_ARGS).tokens
    assert torch.equal(rt.generate(class_labels=[3], **C2I_ARGS).tokens, expected)


# ---------------------------------------------------------------------------------------------------------------
# arguments of generate
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("label", [-1, 1000, 3.5, True, "7", None])
def test_class_label_out_of_range(rt_c2i16: Runtime, label):
    with raises(InvalidRequestError, "class_labels"):
        rt_c2i16.generate(class_labels=[207, label], **C2I_ARGS)


@pytest.mark.parametrize("label", [-1, 1000])
def test_class_label_message_names_the_range(rt_c2i16: Runtime, label):
    with raises(InvalidRequestError, repr(label), "0..999"):
        rt_c2i16.generate(class_labels=label, **C2I_ARGS)


def test_class_labels_empty_or_missing(rt_c2i16: Runtime):
    with raises(InvalidRequestError, "non-empty"):
        rt_c2i16.generate(class_labels=[], **C2I_ARGS)
    with raises(InvalidRequestError, "class_labels"):
        rt_c2i16.generate(**C2I_ARGS)


def test_c2i_size(rt_c2i16: Runtime):
    with raises(InvalidRequestError, "256x256", "512x512"):
        rt_c2i16.generate(class_labels=[1], height=512, width=512, **C2I_ARGS)
    with raises(InvalidRequestError, "256x256", "256x128"):
        rt_c2i16.generate(class_labels=[1], height=256, width=128, **C2I_ARGS)


def test_c2i_zero_size_is_refused(rt_c2i16: Runtime):
    with raises(InvalidRequestError, "height", "0"):
        rt_c2i16.generate(class_labels=[1], height=0, width=0, **C2I_ARGS)


@pytest.mark.parametrize("height", ["512", 512.0])
def test_t2i_size_of_wrong_type_names_the_argument(rt_t2i64: Runtime, height):
    with raises(InvalidRequestError, "height", "int"):
        rt_t2i64.generate("a cat", **{**T2I_ARGS, "height": height})


@pytest.mark.parametrize("steps", [0, -2, 1.5, True])
def test_steps_below_one(rt_t2i64: Runtime, rt_c2i16: Runtime, steps):
    with raises(InvalidRequestError, "num_sampling_steps", repr(steps)):
        rt_t2i64.generate("a cat", **{**T2I_ARGS, "num_sampling_steps": steps})
    with raises(InvalidRequestError, "num_sampling_steps"):
        rt_c2i16.generate(class_labels=[1], **{**C2I_ARGS, "num_sampling_steps": steps})


@pytest.mark.parametrize("guidance", [float("nan"), float("inf"), float("-inf"), "7.5"])
def test_non_finite_guidance(rt_t2i64: Runtime, rt_c2i16: Runtime, guidance):
    with raises(InvalidRequestError, "guidance_scale", "finite"):
        rt_t2i64.generate("a cat", **{**T2I_ARGS, "guidance_scale": guidance})
    with raises(InvalidRequestError, "guidance_scale"):
        rt_c2i16.generate(class_labels=[1], **{**C2I_ARGS, "guidance_scale": guidance})


@pytest.mark.parametrize("prompt, part", [([], "non-empty"), (3, "prompt"), (["a cat", 5], "prompt[1]"),
                                          (b"a cat", "prompt"), (None, "needs a prompt")])
def test_bad_prompt(rt_t2i64: Runtime, prompt, part: str):
    with raises(InvalidRequestError, part):
        rt_t2i64.generate(prompt, **T2I_ARGS)


@pytest.mark.parametrize("negative", [["a", "b", "c"], [], 5, ["a", 5]])
def test_bad_negative_prompt(rt_t2i64: Runtime, negative):
    with raises(InvalidRequestError, "negative_prompt", "2 strings"):
        rt_t2i64.generate(["a cat", "a dog"], negative_prompt=negative, **T2I_ARGS)


def test_inputs_of_the_other_family(rt_t2i64: Runtime, rt_c2i16: Runtime):
    with raises(InvalidRequestError, "class_labels", "prompts"):
        rt_t2i64.generate("a cat", class_labels=[1], **T2I_ARGS)
    with raises(InvalidRequestError, "class_labels"):
        rt_t2i64.generate(class_labels=[1], **C2I_ARGS)
    with raises(InvalidRequestError, "prompt"):
        rt_c2i16.generate("a cat", **C2I_ARGS)
    with raises(InvalidRequestError, "prompt"):
        rt_c2i16.generate(class_labels=[1], negative_prompt="blurry", **C2I_ARGS)


def test_seed_and_generator(rt_t2i64: Runtime):
    with raises(InvalidRequestError, "seed", "generator"):
        rt_t2i64.generate("a cat", generator=torch.Generator().manual_seed(0), **T2I_ARGS)
    args = {k: v for k, v in T2I_ARGS.items() if k != "seed"}
    with raises(InvalidRequestError, "torch.Generator"):
        rt_t2i64.generate("a cat", generator=0, **args)
    with raises(InvalidRequestError, "seed"):
        rt_t2i64.generate("a cat", **{**T2I_ARGS, "seed": -1})
    with raises(InvalidRequestError, "seed"):
        rt_t2i64.generate("a cat", **{**T2I_ARGS, "seed": 1.5})


@pytest.mark.parametrize("output_type", ["jpeg", "PIL", None])
def test_unknown_output_type(rt_t2i64: Runtime, output_type):
    with raises(InvalidRequestError, repr(output_type), "pil, np, pt, tokens"):
        rt_t2i64.generate("a cat", **{**T2I_ARGS, "output_type": output_type})


def test_other_bad_arguments(rt_t2i64: Runtime):
    with raises(InvalidRequestError, "num_images"):
        rt_t2i64.generate("a cat", num_images=0, **T2I_ARGS)
    with raises(InvalidRequestError, "callback"):
        rt_t2i64.generate("a cat", callback="print", **T2I_ARGS)


def test_bad_decode_tokens(rt_t2i64: Runtime):
    good = torch.ones(1, 1024, 32, dtype=torch.int8)
    with raises(InvalidRequestError, "[N, 1024, 32]", "(1, 1000, 32)"):
        rt_t2i64.decode_tokens(good[:, :1000], 512, 512)
    with raises(InvalidRequestError, "[N, 1024, 32]"):
        rt_t2i64.decode_tokens(good.numpy(), 512, 512)
    with raises(InvalidRequestError, "output_type"):
        rt_t2i64.decode_tokens(good, 512, 512, output_type="tokens")
    with raises(InvalidRequestError, "seed", "generator"):
        rt_t2i64.decode_tokens(good, 512, 512, seed=1, generator=torch.Generator())


# ---------------------------------------------------------------------------------------------------------------
# devices, dtypes, backends
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it(t2i64_dir: Path):
    with raises(UnsupportedDeviceError, "'cuda'", "no usable CUDA device"):
        Runtime.from_pretrained(t2i64_dir, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_index_beyond_the_devices(t2i64_dir: Path):
    with raises(UnsupportedDeviceError, "cuda:99"):
        Runtime.from_pretrained(t2i64_dir, device="cuda:99")


@pytest.mark.parametrize("device", ["tpu", "meta", "not-a-device"])
def test_unsupported_device(t2i64_dir: Path, device: str):
    with raises(UnsupportedDeviceError, repr(device)):
        Runtime.from_pretrained(t2i64_dir, device=device)


@pytest.mark.parametrize("dtype", ["float8", "half", torch.int8, torch.complex64])
def test_unknown_dtype(t2i64_dir: Path, dtype):
    with raises(UnsupportedDeviceError, "dtype"):
        Runtime.from_pretrained(t2i64_dir, device="cpu", dtype=dtype)


def test_unknown_backend(t2i64_dir: Path):
    with raises(InvalidRequestError, "'cuda-graphs'", "reference", "triton"):
        Runtime.from_pretrained(t2i64_dir, device="cpu", backend="cuda-graphs")


def test_triton_backend_on_cpu_needs_the_interpreter(t2i64_dir: Path, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with raises(UnsupportedDeviceError, "TRITON_INTERPRET=1", "backend='reference'"):
        Runtime.from_pretrained(t2i64_dir, device="cpu", backend="triton")