"""Writers of tiny models in the community diffusers port's layouts, made from the tiny release-layout models of
``bitdance_rt.tiny_models`` (same tensors, the port's folders, file names and configs), for the loader tests.

``write_t2i_port(release_dir, out)``: ``model_index.json`` and ``tokenizer/``, ``text_encoder/``, ``autoencoder/``,
``diffusion_head/``, ``projector/`` as the port's ``save_pretrained`` lays them out (the diffusion head's weights
sharded diffusers-style when ``shard_head``). ``write_c2i_port(checkpoint, tokenizer, out)``: one ImageNet model
folder, ``model_index.json``, ``transformer/`` and ``autoencoder/``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from bitdance_rt.tiny_models import TINY_DDCONFIG

DIFFUSERS_VERSION = "0.36.0"
WEIGHTS = "diffusion_pytorch_model.safetensors"


def _json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _part_config(class_name: str, fields: dict) -> dict:
    return {"_class_name": class_name, "_diffusers_version": DIFFUSERS_VERSION, **fields}


def write_t2i_port(release: Path, out: Path, shard_head: bool = False) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    _json(out / "model_index.json", {
        "_class_name": "BitDanceDiffusionPipeline", "_diffusers_version": DIFFUSERS_VERSION,
        "autoencoder": ["bitdance_diffusers.modeling_autoencoder", "BitDanceAutoencoder"],
        "diffusion_head": ["bitdance_diffusers.modeling_diffusion_head", "BitDanceDiffusionHead"],
        "projector": ["bitdance_diffusers.modeling_projector", "BitDanceProjector"],
        "text_encoder": ["transformers", "Qwen3ForCausalLM"],
        "tokenizer": ["transformers", "Qwen2TokenizerFast"]})
    (out / "tokenizer").mkdir(exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(release / name, out / "tokenizer" / name)
    (out / "text_encoder").mkdir(exist_ok=True)
    for f in release.glob("model*.safetensors*"):
        shutil.copy(f, out / "text_encoder" / f.name)
    config = json.loads((release / "config.json").read_text())
    _json(out / "text_encoder" / "config.json", config)

    ae = json.loads((release / "ae_config.json").read_text())
    _json(out / "autoencoder" / "config.json", _part_config("BitDanceAutoencoder", ae))
    shutil.copy(release / "ae.safetensors", out / "autoencoder" / WEIGHTS)

    head = json.loads((release / "vision_head_config.json").read_text())
    _json(out / "diffusion_head" / "config.json",
          _part_config("BitDanceDiffusionHead", {**head, "grad_checkpointing": False}))
    if shard_head:
        _write_sharded(load_file(str(release / "vision_head.safetensors")), out / "diffusion_head")
    else:
        shutil.copy(release / "vision_head.safetensors", out / "diffusion_head" / WEIGHTS)

    _json(out / "projector" / "config.json", _part_config("BitDanceProjector", {
        "in_dim": json.loads((release / "ae_config.json").read_text())["ddconfig"]["z_channels"],
        "out_dim": config["hidden_size"], "hidden_act": "gelu_pytorch_tanh"}))
    shutil.copy(release / "projector.safetensors", out / "projector" / WEIGHTS)
    return out


def _write_sharded(tensors: dict[str, torch.Tensor], folder: Path) -> None:
    """diffusers' sharded form: two ``diffusion_pytorch_model-0000k-of-00002.safetensors`` and the index."""
    keys = sorted(tensors)
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
    weight_map = {}
    for k, half in enumerate(halves):
        name = f"diffusion_pytorch_model-{k + 1:05d}-of-00002.safetensors"
        save_file({key: tensors[key] for key in half}, str(folder / name), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(half, name)
    _json(folder / "diffusion_pytorch_model.safetensors.index.json", {"metadata": {}, "weight_map": weight_map})


def write_c2i_port(checkpoint: Path, tokenizer: Path, out: Path, parallel_num: int) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    _json(out / "model_index.json", {
        "_class_name": ["pipeline_bitdance_imagenet", "BitDanceImageNetPipeline"],
        "_diffusers_version": DIFFUSERS_VERSION,
        "transformer": ["modeling_transformer", "BitDanceImageNetTransformer"]})
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["ema"]
    model = {k: v.contiguous() for k, v in state.items() if not k.startswith("vae.")}
    _json(out / "transformer" / "config.json", _part_config("BitDanceImageNetTransformer", {
        "architecture": "BitDance-tiny", "parallel_num": parallel_num, "resolution": 256, "down_size": 16,
        "latent_dim": 32, "num_classes": 1000, "source_key": "ema",
        "runtime_impl": "model_parallel.py" if parallel_num > 1 else "model.py"}))
    save_file(model, str(out / "transformer" / WEIGHTS), metadata={"format": "pt"})
    ae = torch.load(tokenizer, map_location="cpu", weights_only=True)["state_dict"]
    _json(out / "autoencoder" / "config.json", _part_config("BitDanceImageNetAutoencoder", {
        "ddconfig": dict(TINY_DDCONFIG), "num_codebooks": 4}))
    save_file({k: v.contiguous() for k, v in ae.items() if not k.startswith("quantize.")},
              str(out / "autoencoder" / WEIGHTS), metadata={"format": "pt"})
    return out
