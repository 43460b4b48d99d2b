"""The model families: ``TextToImage`` and ``ClassConditional`` (``family.py`` says what a family answers).

``load_family(path, ...)`` tells the family from the files (a directory with ``config.json`` is a text-to-image
model; a file is a class-conditional checkpoint), loads the model and returns its family object.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CheckpointError, InvalidRequestError
from .class_conditional import ClassConditional
from .family import Family, Placement
from .text_to_image import TextToImage

__all__ = ["Family", "Placement", "TextToImage", "ClassConditional", "load_family", "family_of"]


def load_family(path: Path, tokenizer_path: Path | None, device: torch.device, dtype: torch.dtype,
                trust_pickle: bool = False, quantization: str | None = None) -> Family:
    """``quantization``: None, "fp8" or "int8", already checked (``quantization.check_quantization``)."""
    from ..loading.c2i_checkpoint import load_c2i
    from ..loading.t2i_checkpoint import is_t2i_directory, load_t2i

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass a text-to-image model directory or a "
                              "class-conditional checkpoint file.")
    if is_t2i_directory(path):
        if tokenizer_path is not None:
            raise InvalidRequestError("tokenizer_path is only for class-conditional checkpoints; the "
                                      "text-to-image directory carries its own tokenizer.")
        return TextToImage(load_t2i(path, device, dtype, quantization))
    if path.is_file():
        return ClassConditional(load_c2i(path, Path(tokenizer_path) if tokenizer_path is not None else None, device,
                                         dtype, trust_pickle=trust_pickle,
                                         quantization=quantization))
    raise CheckpointError(f"{path} is a directory without config.json: not a text-to-image model directory (and a "
                          "class-conditional checkpoint is a single file).")


def family_of(model) -> Family:
    """The family object of a loaded model (``loading``'s ``T2IModel`` or ``C2IModel``), or ``model`` itself when it
    already is one."""
    from ..loading.t2i_checkpoint import T2IModel

    if isinstance(model, Family):
        return model
    return TextToImage(model) if isinstance(model, T2IModel) else ClassConditional(model)
