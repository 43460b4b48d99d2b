"""Loading a class-conditional BitDance checkpoint (ImageNet B/L/H, 1x/4x/16x) and its tokenizer file.

The checkpoint is a ``torch.save`` dict whose ``ema`` (preferred) or ``model`` entry is the whole model's state
dict; the decoder comes from the tokenizer file's ``state_dict`` (``decoder.*``), or, when no tokenizer file is
given, from the checkpoint's own ``vae.decoder.*`` copy. No configuration is stored, so every size is inferred from
tensor shapes: width from ``emb_norm``, depth from the layer keys, P from ``query_token``, the class count and the
number of class tokens from ``cls_embedding``, the token grid from ``pos_for_diff``, the head's kind from its adaLN
width. Attention heads are 64 channels wide in every released size (B 768/12, L 1024/16, H 1280/20).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..reference.c2i_backbone import C2IBackbone, C2IConfig
from ..reference.diffusion_head import DiffusionHead, DiffusionHeadConfig
from ..reference.token_decoder import DecoderLayout, TokenDecoder, expected_shapes as decoder_shapes, infer_layout
from .fused_weights import fuse_for_engine
from .head_config import check_head_config
from .quantized_load import load_part
from .tensor_files import TensorTable, check_shapes, dict_table, torch_file

C2I_ATTN_HEAD_DIM = 64


@dataclass
class C2IArchitecture:
    """What the tensor shapes say about a class-conditional checkpoint."""
    path: Path
    tokenizer_path: Path | None
    config: C2IConfig
    head_config: DiffusionHeadConfig
    decoder_layout: DecoderLayout

    @property
    def parallel(self) -> int:
        return self.config.parallel


@dataclass
class C2IFiles(C2IArchitecture):
    """The architecture plus the checked tensor tables, before any weight is placed."""
    parts: dict[str, tuple[TensorTable, dict]]


@dataclass
class C2IModel(C2IArchitecture):
    """The architecture plus the loaded reference modules."""
    backbone: C2IBackbone
    head: DiffusionHead
    decoder: TokenDecoder


def _count(table: TensorTable, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in table.shapes if (m := rx.fullmatch(k))})


def _shape(table: TensorTable, key: str, part: str) -> tuple[int, ...]:
    if key not in table.shapes:
        raise CheckpointError(f"{part} ({table.files()}): key {key!r} is missing; this is not a class-conditional "
                              "BitDance checkpoint.")
    return table.shapes[key]


def infer_c2i_config(table: TensorTable) -> C2IConfig:
    dim = _shape(table, "emb_norm.weight", "model")[0]
    if dim % C2I_ATTN_HEAD_DIM:
        raise CheckpointError(f"model ({table.files()}): width {dim} is not a multiple of the "
                              f"{C2I_ATTN_HEAD_DIM}-channel attention heads.")
    tokens = _shape(table, "pos_for_diff.weight", "model")[0]
    grid = int(round(tokens ** 0.5))
    if grid * grid != tokens:
        raise CheckpointError(f"model ({table.files()}): pos_for_diff has {tokens} rows, not a square token grid.")
    parallel = table.shapes["query_token"][1] + 1 if "query_token" in table.shapes else 1
    rows, cls_width = _shape(table, "cls_embedding.weight", "model")
    if cls_width % dim or rows < 2:
        raise CheckpointError(f"model ({table.files()}): cls_embedding.weight is {rows}x{cls_width}; expected "
                              f"(classes + 1) x (class tokens · {dim}).")
    return C2IConfig(dim=dim, num_layers=_count(table, r"layers\.(\d+)\.attention\.wqkv\.weight"),
                     num_heads=dim // C2I_ATTN_HEAD_DIM, token_channels=_shape(table, "proj_in.w1.weight", "model")[1],
                     parallel=parallel, grid=grid, class_tokens=cls_width // dim, num_classes=rows - 1)


def infer_head_config(table: TensorTable, cfg: C2IConfig) -> DiffusionHeadConfig:
    width = _shape(table, "input_proj.weight", "diffusion head")[0]
    adaln = _shape(table, "ada_ln_blocks.0.weight", "diffusion head")[0]
    if adaln not in (3 * width, 6 * width):
        raise CheckpointError(f"diffusion head ({table.files()}): ada_ln_blocks.0.weight has {adaln} rows, "
                              f"expected 3x or 6x the head width {width}.")
    kind = "res" if adaln == 3 * width else "trans"
    if (kind == "res") != (cfg.parallel == 1):
        raise CheckpointError(f"diffusion head ({table.files()}): a {'ResBlock' if kind == 'res' else 'TransBlock'} "
                              f"head does not fit P = {cfg.parallel} (P = 1 uses ResBlocks, P > 1 TransBlocks).")
    return DiffusionHeadConfig(
        token_channels=cfg.token_channels, cond_channels=cfg.dim, width=width,
        depth=_count(table, r"res_blocks\.(\d+)\.w1\.weight"), num_adaln=_count(table, r"ada_ln_blocks\.(\d+)\.weight"),
        block_kind=kind, attn_head_dim=C2I_ATTN_HEAD_DIM, use_swiglu=True, sigmoid_output=False, time_shift=1.0)


def _model_state(ckpt: dict, path: Path) -> dict:
    for entry in ("ema", "model"):
        if isinstance(ckpt.get(entry), dict):
            return ckpt[entry]
    raise CheckpointError(f"{path}: no 'ema' or 'model' state dict in the checkpoint (found entries "
                          f"{sorted(map(str, ckpt))[:8]}); this is not a class-conditional BitDance checkpoint.")


def open_c2i_files(path: Path, tokenizer_path: Path | None, device: torch.device, dtype: torch.dtype,
             trust_pickle: bool = False) -> C2IFiles:
    model_table = dict_table(_model_state(torch_file(path, trust_pickle, "checkpoint"), path), path, device, dtype)
    if tokenizer_path is not None:
        tok = torch_file(tokenizer_path, trust_pickle, "tokenizer file")
        if not isinstance(tok.get("state_dict"), dict):
            raise CheckpointError(f"{tokenizer_path}: no 'state_dict' entry; this is not a BitDance tokenizer file.")
        decoder_table = dict_table(tok["state_dict"], tokenizer_path, device, dtype).subset("decoder.")
    else:
        decoder_table = model_table.subset("vae.decoder.")
        if not decoder_table.shapes:
            raise CheckpointError(f"{path}: the checkpoint carries no token decoder (vae.decoder.*); pass "
                                  "tokenizer_path= the tokenizer file (for example ae_d16c32.pt).")
    cfg = infer_c2i_config(model_table)
    head_table = model_table.subset("head.net.")
    head_cfg = infer_head_config(head_table, cfg)
    check_head_config(head_cfg, cfg.parallel, str(path))
    layout = infer_layout({k: torch.empty(s, device="meta") for k, s in decoder_table.shapes.items()},
                          decoder_table.files())
    if layout.z_channels != cfg.token_channels:
        raise CheckpointError(f"token decoder ({decoder_table.files()}): it decodes {layout.z_channels}-channel "
                              f"tokens but the model makes {cfg.token_channels}-channel tokens.")
    backbone_table = TensorTable({k: s for k, s in model_table.shapes.items() if not k.startswith(("head.", "vae."))},
                                 model_table.fetch, model_table.source, model_table.stored_dtype)
    parts = {"backbone": (backbone_table, cfg.expected_shapes()), "head": (head_table, head_cfg.expected_shapes()),
             "decoder": (decoder_table, decoder_shapes(layout))}
    for name, (table, shapes) in parts.items():
        check_shapes(table, shapes, name)
    return C2IFiles(path, tokenizer_path, cfg, head_cfg, layout, parts)


def load_c2i(path: Path, tokenizer_path: Path | None, device: torch.device, dtype: torch.dtype,
             trust_pickle: bool = False, quantization: str | None = None) -> C2IModel:
    """The model, its backbone and head linears in ``quantization`` (None, "fp8", "int8": ``quantized_load``)."""
    files = open_c2i_files(path, tokenizer_path, device, dtype, trust_pickle)
    factories = {"backbone": lambda: C2IBackbone(files.config), "head": lambda: DiffusionHead(files.head_config),
                 "decoder": lambda: TokenDecoder(files.decoder_layout)}
    modules = {name: load_part(factories[name], table, shapes, name, quantization)
               for name, (table, shapes) in files.parts.items()}
    fuse_for_engine(None, modules["head"])
    architecture = {f: getattr(files, f) for f in C2IArchitecture.__dataclass_fields__}
    return C2IModel(**architecture, **modules)
