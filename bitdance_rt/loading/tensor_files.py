"""Reading tensors from released files, checking them, and placing them in modules without a host copy.

A checkpoint part is read as a :class:`TensorTable`: key -> shape (known before any data is read) and a loader
that materialises one tensor at a time directly on the target device and dtype (safetensors through
``safe_open``; ``torch.save`` files through ``torch.load(mmap=True)``). :func:`check_shapes` compares a table
against the shapes a module expects and names the file, key, expected and found on any mismatch;
:func:`load_into` builds the module on the meta device and assigns the converted tensors.
"""

from __future__ import annotations

import argparse
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from ..errors import CheckpointError


@dataclass
class TensorTable:
    """Tensors of one logical part (possibly spread over several files)."""
    shapes: dict[str, tuple[int, ...]]
    fetch: Callable[[str], torch.Tensor]
    source: dict[str, str]  # key -> file it lives in, for messages
    stored_dtype: Callable[[str], str] = lambda key: "unknown"

    def subset(self, prefix: str) -> "TensorTable":
        """The keys under ``prefix`` with the prefix removed."""
        keys = {k[len(prefix):]: k for k in self.shapes if k.startswith(prefix)}
        return TensorTable({k: self.shapes[full] for k, full in keys.items()}, lambda k: self.fetch(keys[k]),
                           {k: self.source[full] for k, full in keys.items()}, lambda k: self.stored_dtype(keys[k]))

    def files(self) -> str:
        return ", ".join(sorted(set(self.source.values()))) or "<no file>"


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path} does not exist or is not a file. "
                              "Download the complete model directory (see `bitdance-rt download`).")
    return path


def read_json(path: Path, what: str) -> dict:
    require_file(path, what)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); the file is damaged or truncated, download it again.") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(data).__name__}.")
    return data


def safetensors_table(files: Mapping[str, Path], device: torch.device, dtype: torch.dtype) -> TensorTable:
    """Table over safetensors files; ``files`` maps each key to the file holding it (one file: every key)."""
    from safetensors import safe_open

    handles = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for path in sorted(set(files.values())):
        require_file(path, "weights file")
        try:
            handles[path] = safe_open(str(path), framework="pt", device=_safetensors_device(device))
        except Exception as e:  # safetensors raises its own error type for truncated or corrupt headers
            raise CheckpointError(f"{path}: cannot be read as safetensors ({e}); the file is damaged or "
                                  "truncated, download it again.") from e
    source: dict[str, str] = {}
    for key, path in files.items():
        h = handles[path]
        if key not in h.keys():
            raise CheckpointError(f"{path}: key {key!r} is listed for this file but missing from it; "
                                  "the index and the shards do not match, download the model again.")
        shapes[key] = tuple(h.get_slice(key).get_shape())
        source[key] = str(path)

    def fetch(key: str) -> torch.Tensor:
        try:
            t = handles[files[key]].get_tensor(key)
        except Exception as e:
            raise CheckpointError(f"{files[key]}: reading {key!r} failed ({e}); the file is damaged or truncated.") from e
        return t.to(device=device, dtype=dtype)

    return TensorTable(shapes, fetch, source, lambda key: handles[files[key]].get_slice(key).get_dtype())


def single_safetensors(path: Path, device: torch.device, dtype: torch.dtype) -> TensorTable:
    from safetensors import safe_open

    require_file(path, "weights file")
    try:
        with safe_open(str(path), framework="pt") as h:
            keys = list(h.keys())
    except Exception as e:
        raise CheckpointError(f"{path}: cannot be read as safetensors ({e}); the file is damaged or "
                              "truncated, download it again.") from e
    return safetensors_table({k: path for k in keys}, device, dtype)


def sharded_safetensors(directory: Path, device: torch.device, dtype: torch.dtype) -> TensorTable:
    """The HF layout: ``model.safetensors.index.json`` + shards, or one ``model.safetensors``."""
    index = directory / "model.safetensors.index.json"
    if not index.is_file():
        if (directory / "model.safetensors").is_file():
            return single_safetensors(directory / "model.safetensors", device, dtype)
        raise CheckpointError(f"{directory}: neither model.safetensors.index.json nor model.safetensors found; "
                              "the backbone weights are missing.")
    weight_map = read_json(index, "weights index").get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: no 'weight_map' object; the index is damaged, download it again.")
    missing = sorted({f for f in weight_map.values() if not (directory / f).is_file()})
    if missing:
        raise CheckpointError(f"{index} lists shard(s) that are missing in {directory}: {', '.join(missing)}. "
                              "Download the complete model directory.")
    return safetensors_table({k: directory / f for k, f in weight_map.items()}, device, dtype)


def torch_file(path: Path, trust_pickle: bool, what: str) -> dict:
    """``torch.load`` with ``weights_only=True`` and mmap; refuses pickles that need more unless trusted."""
    require_file(path, what)
    try:
        # the release's trainer stores its argparse.Namespace next to the weights: plain data, safe to allow
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(str(path), map_location="cpu", mmap=True, weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: this {what} holds Python objects beyond tensors and plain containers, which "
            "torch.load(weights_only=True) refuses. If you trust the file's origin, load it with "
            f"trust_pickle=True (it then runs arbitrary code from the pickle). Detail: {str(e).splitlines()[0]}") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot be read as a torch.save file ({str(e).splitlines()[0]}); "
                              "the file is damaged or truncated, download it again.") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict saved with torch.save, found {type(obj).__name__}.")
    return obj


def dict_table(tensors: Mapping[str, object], path: Path, device: torch.device, dtype: torch.dtype) -> TensorTable:
    bad = [k for k, v in tensors.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries {bad[:5]} are not tensors; this is not a state dict.")
    return TensorTable({k: tuple(v.shape) for k, v in tensors.items()},
                       lambda k: tensors[k].to(device=device, dtype=dtype),
                       {k: str(path) for k in tensors}, lambda k: str(tensors[k].dtype).replace("torch.", ""))


def check_shapes(table: TensorTable, expected: Mapping[str, tuple[int, ...]], part: str,
                 allow_extra: bool = False) -> None:
    """Raise CheckpointError naming file, key, expected and found shapes on the first disagreement."""
    for key, shape in expected.items():
        if key not in table.shapes:
            raise CheckpointError(f"{part} ({table.files()}): key {key!r} is missing (expected shape "
                                  f"{list(shape)}). The file does not hold a complete model of this architecture.")
        if tuple(table.shapes[key]) != tuple(shape):
            raise CheckpointError(f"{part} ({table.source[key]}): key {key!r} has shape {list(table.shapes[key])}, "
                                  f"expected {list(shape)} from the model's configuration.")
    if not allow_extra:
        extra = sorted(set(table.shapes) - set(expected))
        if extra:
            raise CheckpointError(f"{part} ({table.files()}): unexpected key(s) {extra[:5]}"
                                  f"{' …' if len(extra) > 5 else ''}; the file belongs to a different architecture.")


def load_into(factory: Callable[[], nn.Module], table: TensorTable, expected: Mapping[str, tuple[int, ...]],
              part: str) -> nn.Module:
    """Build ``factory()`` on the meta device and assign the checked tensors (each read once, on target)."""
    check_shapes(table, expected, part, allow_extra=True)
    with torch.device("meta"):
        module = factory()
    state = {k: table.fetch(k) for k in expected}
    module.load_state_dict(state, strict=True, assign=True)
    return module.eval().requires_grad_(False)


def _safetensors_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"
    return device.type

