"""Describing a checkpoint from its configs and tensor headers alone, without reading the weights."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .c2i_checkpoint import open_c2i_files
from .t2i_checkpoint import is_t2i_directory, open_t2i_files


def inspect_checkpoint(path: str | Path, tokenizer_path: str | Path | None = None,
                       trust_pickle: bool = False) -> dict[str, Any]:
    """Family, sizes, P, parameter counts per part and the stored dtypes."""
    path = Path(path)
    cpu = torch.device("cpu")
    if is_t2i_directory(path):
        files = open_t2i_files(path, cpu, torch.float32)
        c = files.backbone_config
        info: dict[str, Any] = {"family": "text-to-image", "path": str(path), "tokens_per_step": files.parallel,
                                "backbone": {"kind": "qwen3", "hidden": c.hidden_size, "layers": c.num_hidden_layers,
                                             "heads": c.num_attention_heads, "kv_heads": c.num_key_value_heads,
                                             "head_dim": c.head_dim, "ffn": c.intermediate_size}}
    elif path.is_file():
        files = open_c2i_files(path, Path(tokenizer_path) if tokenizer_path else None, cpu, torch.float32, trust_pickle)
        c2 = files.config
        info = {"family": "class-conditional", "path": str(path), "tokens_per_step": c2.parallel,
                "backbone": {"hidden": c2.dim, "layers": c2.num_layers, "heads": c2.num_heads}}
    else:
        raise CheckpointError(f"{path}: neither a text-to-image model directory (with config.json) nor a "
                              "class-conditional checkpoint file.")
    h = files.head_config
    info["head"] = {"kind": {"trans": "TransBlock", "res": "ResBlock"}[h.block_kind], "width": h.width,
                    "blocks": h.depth, "adaln_linears": h.num_adaln, "token_channels": h.token_channels}
    d = files.decoder_layout
    info["decoder"] = {"downsample": d.downsample, "level_channels": list(d.level_channels),
                       "res_blocks": d.num_res_blocks, "gan": d.gan_decoder}
    info["parameters"] = {name: sum(math.prod(shape) for shape in shapes.values())
                          for name, (_, shapes) in files.parts.items()}
    info["parameters"]["total"] = sum(info["parameters"].values())
    info["stored_dtypes"] = {name: dict(Counter(table.stored_dtype(k) for k in shapes))
                             for name, (table, shapes) in files.parts.items()}
    return info

