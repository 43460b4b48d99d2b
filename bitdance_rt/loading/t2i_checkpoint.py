"""Loading a text-to-image BitDance directory (Hugging Face Qwen3 files plus the three side parts).

Layout: ``config.json``, ``model.safetensors.index.json`` + shards (or ``model.safetensors``), ``tokenizer.json``,
``ae_config.json`` + ``ae.safetensors`` (decoder under ``decoder.*``), ``vision_head_config.json`` +
``vision_head.safetensors`` (``net.*``), ``projector.safetensors`` (``fc1.*``, ``fc2.*``). Every size is read from
the configs and cross-checked against the tensor shapes; nothing is taken from the directory's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..prompt_tokenizer import PromptTokenizer
from ..reference.diffusion_head import DiffusionHead, DiffusionHeadConfig
from ..reference.qwen3 import Qwen3Backbone, Qwen3Config
from ..reference.t2i_embeddings import TokenProjector
from ..reference.token_decoder import DecoderLayout, TokenDecoder, expected_shapes as decoder_shapes, \
    layout_from_ddconfig
from ..sizes import T2I_SIZES
from .fused_weights import fuse_for_engine
from .head_config import check_head_config
from .quantized_load import load_part
from .tensor_files import (TensorTable, check_shapes, read_json, require_file, sharded_safetensors,
                           single_safetensors)

T2I_HEAD_ATTN_DIM = 128
REQUIRED_FILES = ("config.json", "tokenizer.json", "ae_config.json", "ae.safetensors", "vision_head_config.json",
                  "vision_head.safetensors", "projector.safetensors")


@dataclass
class T2IArchitecture:
    """What the configs say about a T2I directory."""
    path: Path
    backbone_config: Qwen3Config
    head_config: DiffusionHeadConfig
    decoder_layout: DecoderLayout
    parallel: int
    tokenizer: PromptTokenizer

    @property
    def token_channels(self) -> int:
        return self.head_config.token_channels


@dataclass
class T2IFiles(T2IArchitecture):
    """The architecture plus the checked tensor tables, before any weight is read."""
    parts: dict[str, tuple[TensorTable, dict]]


@dataclass
class T2IModel(T2IArchitecture):
    """The architecture plus the loaded reference modules."""
    backbone: Qwen3Backbone
    head: DiffusionHead
    projector: TokenProjector
    decoder: TokenDecoder


def is_t2i_directory(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def head_config_from_json(cfg: dict, source: Path, hidden: int) -> tuple[DiffusionHeadConfig, int]:
    def field(name: str, kind=int):
        if name not in cfg:
            raise CheckpointError(f"{source}: field {name!r} is missing; it is one of the DiffHead arguments.")
        try:
            return kind(cfg[name])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{source}: field {name!r} = {cfg[name]!r} is not a valid {kind.__name__}.") from e

    parallel = field("parallel_num")
    head = DiffusionHeadConfig(
        token_channels=field("ch_target"), cond_channels=field("ch_cond"), width=field("ch_latent"),
        depth=field("depth_latent"), num_adaln=field("depth_adanln"), block_kind="trans",
        attn_head_dim=T2I_HEAD_ATTN_DIM, use_swiglu=bool(cfg.get("use_swiglu", False)), sigmoid_output=True,
        time_shift=float(cfg.get("time_shift", 1.0)))
    if head.cond_channels != hidden:
        raise CheckpointError(f"{source}: ch_cond = {head.cond_channels} but the backbone's hidden size is {hidden}.")
    check_head_config(head, parallel, str(source))
    return head, parallel


def open_t2i_files(path: Path, device: torch.device, dtype: torch.dtype) -> T2IFiles:
    for name in REQUIRED_FILES:
        require_file(path / name, f"{name} of the text-to-image model")
    backbone_cfg = Qwen3Config.from_hf_dict(read_json(path / "config.json", "config.json"), str(path / "config.json"))
    head_cfg, parallel = head_config_from_json(read_json(path / "vision_head_config.json", "head config"),
                                               path / "vision_head_config.json", backbone_cfg.hidden_size)
    ae_cfg = read_json(path / "ae_config.json", "tokenizer config")
    if not isinstance(ae_cfg.get("ddconfig"), dict):
        raise CheckpointError(f"{path / 'ae_config.json'}: no 'ddconfig' object; it configures the token decoder.")
    layout = layout_from_ddconfig(ae_cfg["ddconfig"], bool(ae_cfg.get("gan_decoder", False)),
                                  str(path / "ae_config.json"))
    if layout.z_channels != head_cfg.token_channels:
        raise CheckpointError(f"{path / 'ae_config.json'}: z_channels = {layout.z_channels} but the head makes "
                              f"{head_cfg.token_channels}-channel tokens (vision_head_config.json ch_target).")
    tokenizer = PromptTokenizer(path)
    tokenizer.check_special_tokens(parallel, {s // layout.downsample for size in T2I_SIZES for s in size})
    hidden, c = backbone_cfg.hidden_size, head_cfg.token_channels
    parts = {
        "backbone": (sharded_safetensors(path, device, dtype).subset("model."), backbone_cfg.expected_shapes()),
        "head": (single_safetensors(path / "vision_head.safetensors", device, dtype).subset("net."),
                 head_cfg.expected_shapes()),
        "decoder": (single_safetensors(path / "ae.safetensors", device, dtype).subset("decoder."),
                    decoder_shapes(layout)),
        "projector": (single_safetensors(path / "projector.safetensors", device, dtype),
                      {"fc1.weight": (hidden, c), "fc1.bias": (hidden,),
                       "fc2.weight": (hidden, hidden), "fc2.bias": (hidden,)}),
    }
    # check every part before reading any weights, so a bad file fails fast
    for name, (table, shapes) in parts.items():
        check_shapes(table, shapes, name)
    return T2IFiles(path, backbone_cfg, head_cfg, layout, parallel, tokenizer, parts)


def load_t2i(path: Path, device: torch.device, dtype: torch.dtype, quantization: str | None = None
             ) -> T2IModel:
    """The model, its backbone and head linears in ``quantization`` (None, "fp8", "int8": ``quantized_load``)."""
    files = open_t2i_files(path, device, dtype)
    factories = {"backbone": lambda: Qwen3Backbone(files.backbone_config),
                 "head": lambda: DiffusionHead(files.head_config),
                 "decoder": lambda: TokenDecoder(files.decoder_layout),
                 "projector": lambda: TokenProjector(files.head_config.token_channels,
                                                     files.backbone_config.hidden_size)}
    modules = {name: load_part(factories[name], table, shapes, name, quantization)
               for name, (table, shapes) in files.parts.items()}
    fuse_for_engine(modules["backbone"], modules["head"])
    architecture = {f: getattr(files, f) for f in T2IArchitecture.__dataclass_fields__}
    return T2IModel(**architecture, **modules)
