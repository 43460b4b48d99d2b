"""Loading the community diffusers port's folders (``Bili-Sakura/BitDance``; published as
``BiliSakura/BitDance-14B-64x-diffusers``, ``-16x-diffusers`` and ``BitDance-ImageNet-diffusers``) with the runtime's
own loaders, which read the release's layout.

The port's text-to-image folder (``DiffusionPipeline.save_pretrained`` of its pipeline)::

    model_index.json           {"_class_name": "BitDanceDiffusionPipeline", "text_encoder": [...], "tokenizer": [...],
                                "autoencoder": [...], "diffusion_head": [...], "projector": [...]}
    tokenizer/                 tokenizer.json (+ tokenizer_config.json, ...)      the release's tokenizer files
    text_encoder/              config.json, model-0000k-of-0000n.safetensors + model.safetensors.index.json
    autoencoder/               config.json {"ddconfig", "gan_decoder"}, diffusion_pytorch_model.safetensors
    diffusion_head/            config.json (the release's vision_head_config.json fields),
                               diffusion_pytorch_model.safetensors (``net.*``)
    projector/                 config.json {"in_dim", "out_dim", "hidden_act"}, diffusion_pytorch_model.safetensors

The tensors keep the release's key names, so ``release_view`` presents the folder to
``Runtime.from_pretrained`` as the release's directory: a temporary folder of symbolic links to the weight files
(nothing is copied) and the configs rewritten under the release's names.

The port's class-conditional folders (one per model, e.g. ``BitDance_B_16x/``)::

    model_index.json           {"_class_name": [..., "BitDanceImageNetPipeline"], "transformer": [...], ...}
    transformer/               config.json {"architecture", "parallel_num", ...},
                               diffusion_pytorch_model.safetensors (the release checkpoint's ``ema`` state dict)
    autoencoder/               config.json {"ddconfig", "num_codebooks"},
                               diffusion_pytorch_model.safetensors (the tokenizer file's ``state_dict``)

The runtime reads class-conditional models from ``torch.save`` files, so the view holds the two files re-saved
that way (a one-time copy of the weights into the temporary folder, removed after loading).

Key names inside the port's safetensors files were not available to check; the layout above assumes they are the
release's (the port's converter loads them into the release's modules with ``strict=True``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import CheckpointError

PORT_WEIGHTS = "diffusion_pytorch_model.safetensors"
PORT_INDEX = "diffusion_pytorch_model.safetensors.index.json"
T2I_PARTS = ("tokenizer", "text_encoder", "autoencoder", "diffusion_head", "projector")


@dataclass(frozen=True)
class ReleasePaths:
    """What ``Runtime.from_pretrained`` takes: the model path and, for class-conditional models, the tokenizer."""
    model: Path
    tokenizer: Path | None


def layout_of(path: Path) -> str:
    """``"release"`` (a release directory or checkpoint file), ``"port-t2i"`` or ``"port-c2i"``."""
    if path.is_file() or (path / "config.json").is_file():
        return "release"
    index = path / "model_index.json"
    if not index.is_file():
        variants = sorted(p.name for p in path.iterdir() if (p / "model_index.json").is_file()) if path.is_dir() else []
        if variants:
            raise CheckpointError(f"{path} holds several models of the diffusers port ({', '.join(variants)}); pass "
                                  f"one of them, e.g. {path / variants[0]}, or subfolder={variants[0]!r}.")
        raise CheckpointError(f"{path} is neither a release model (a text-to-image directory with config.json, or a "
                              "class-conditional .pt file) nor a diffusers-port folder (model_index.json).")
    entries = _read_json(index)
    if "text_encoder" in entries and "diffusion_head" in entries:
        return "port-t2i"
    if "transformer" in entries:
        return "port-c2i"
    raise CheckpointError(f"{index} names the components {sorted(k for k in entries if not k.startswith('_'))}; a "
                          "BitDance port folder has text_encoder/diffusion_head (text-to-image) or transformer "
                          "(class-conditional).")


@contextmanager
def release_view(path: str | Path, tokenizer_path: str | Path | None = None) -> Iterator[ReleasePaths]:
    """The release-layout paths of ``path`` (a release model or a port folder) for the duration of the block."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist. Pass a local folder: this runtime reads no Hub repository at "
                              "run time (download it first, e.g. `hf download <repo> --local-dir <folder>`).")
    layout = layout_of(path)
    if layout == "release":
        yield ReleasePaths(path, Path(tokenizer_path) if tokenizer_path is not None else None)
        return
    view = Path(tempfile.mkdtemp(prefix="bitdance-port-view-"))
    try:
        if layout == "port-t2i":
            if tokenizer_path is not None:
                raise CheckpointError("tokenizer_path is only for class-conditional models; the text-to-image port "
                                      "folder carries its own autoencoder/.")
            yield ReleasePaths(_t2i_view(path, view), None)
        else:
            yield _c2i_view(path, view, Path(tokenizer_path) if tokenizer_path is not None else None)
    finally:
        shutil.rmtree(view, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------- text-to-image
def _t2i_view(port: Path, view: Path) -> Path:
    for part in T2I_PARTS:
        if not (port / part).is_dir():
            raise CheckpointError(f"{port}: the diffusers-port folder has no {part}/ subfolder; download the whole "
                                  "repository.")
    tokenizer = port / "tokenizer"
    _require(tokenizer / "tokenizer.json")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"):
        if (tokenizer / name).is_file():
            _link(tokenizer / name, view / name)
    encoder = port / "text_encoder"
    _link(_require(encoder / "config.json"), view / "config.json")
    index = encoder / "model.safetensors.index.json"
    if index.is_file():
        _link(index, view / index.name)
        for shard in sorted(set(_read_json(index).get("weight_map", {}).values())):
            _link(encoder / shard, view / shard)
    else:
        _link(_require(encoder / "model.safetensors"), view / "model.safetensors")
    ae_config = _diffusers_config(port / "autoencoder")
    _write_json(view / "ae_config.json", {"ddconfig": ae_config.get("ddconfig"),
                                          "gan_decoder": bool(ae_config.get("gan_decoder", False))})
    _write_json(view / "vision_head_config.json", _diffusers_config(port / "diffusion_head"))
    _single_weights(port / "autoencoder", view / "ae.safetensors")
    _single_weights(port / "diffusion_head", view / "vision_head.safetensors")
    _single_weights(port / "projector", view / "projector.safetensors")
    return view


# ---------------------------------------------------------------------------------------------------- class-cond.
def _c2i_view(port: Path, view: Path, tokenizer_path: Path | None) -> ReleasePaths:
    import torch

    transformer = port / "transformer"
    state = _load_weights(transformer)
    config = _diffusers_config(transformer)
    name = f"BitDance_port_{config.get('parallel_num', 'P')}x.pt"
    model_file = view / name
    torch.save({"ema": state}, model_file)
    del state
    if tokenizer_path is None and (port / "autoencoder").is_dir():
        ae_state = {k: v for k, v in _load_weights(port / "autoencoder").items() if not k.startswith("quantize.")}
        tokenizer_path = view / "ae_port.pt"
        torch.save({"state_dict": ae_state}, tokenizer_path)
    return ReleasePaths(model_file, tokenizer_path)


# ---------------------------------------------------------------------------------------------------- helpers
def _load_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    single, index = folder / PORT_WEIGHTS, folder / PORT_INDEX
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        state: dict = {}
        for shard in sorted(set(_read_json(index).get("weight_map", {}).values())):
            state.update(load_file(str(_require(folder / shard))))
        return state
    raise CheckpointError(f"{folder}: neither {PORT_WEIGHTS} nor {PORT_INDEX} found; the weights of this part are "
                          "missing, download the whole repository.")


def _single_weights(folder: Path, target: Path) -> None:
    """``target`` as one safetensors file: a link to the part's file, or its shards merged into the view."""
    if (folder / PORT_WEIGHTS).is_file():
        _link(folder / PORT_WEIGHTS, target)
        return
    from safetensors.torch import save_file

    save_file(_load_weights(folder), str(target), metadata={"format": "pt"})


def _diffusers_config(folder: Path) -> dict:
    """A part's ``config.json`` without diffusers' own entries (``_class_name``, ``_diffusers_version``, ...)."""
    return {k: v for k, v in _read_json(_require(folder / "config.json")).items() if not k.startswith("_")}


def _require(path: Path) -> Path:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing from the diffusers-port folder; download the whole repository.")
    return path


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot be read as JSON ({e}); download it again.") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(data).__name__}.")
    return data


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _link(source: Path, target: Path) -> None:
    target.symlink_to(_require(source).resolve())
