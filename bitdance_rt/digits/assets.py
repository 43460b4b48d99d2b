"""Where the shipped digits model lives (``bitdance_rt/assets/digits/``) and how to load it.

Files (written by ``tools/train_digits.py``): ``bitdance_digits_4x.pt`` (the class-conditional checkpoint, release
format), ``ae_digits_d4c32.pt`` (the tokenizer file), ``digit_classifier.pt`` (the quality gate's classifier) and
``run.json`` (the training run's record: seed, times, sizes, sampling settings, the gate's labels, seeds and
figures). Every function takes another directory holding the same files (a fresh training run's output).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "digits"
MODEL_FILE = "bitdance_digits_4x.pt"
TOKENIZER_FILE = "ae_digits_d4c32.pt"
CLASSIFIER_FILE = "digit_classifier.pt"
RECORD_FILE = "run.json"
RETRAIN = "python tools/train_digits.py --out bitdance_rt/assets/digits"


@dataclass(frozen=True)
class DigitsFiles:
    model: Path
    tokenizer: Path
    classifier: Path
    record: Path


def digits_files(directory: str | Path | None = None) -> DigitsFiles:
    """The four files in ``directory`` (default: the shipped assets); raises when one is missing."""
    root = ASSET_DIR if directory is None else Path(directory)
    files = DigitsFiles(root / MODEL_FILE, root / TOKENIZER_FILE, root / CLASSIFIER_FILE, root / RECORD_FILE)
    missing = [p.name for p in (files.model, files.tokenizer, files.classifier, files.record) if not p.is_file()]
    if missing:
        raise CheckpointError(f"{root}: the digits model's files {', '.join(missing)} are missing; rebuild them with "
                              f"`{RETRAIN}` (needs scikit-learn: pip install -e '.[train]').")
    return files


def load_record(directory: str | Path | None = None) -> dict:
    """The training run's record (``run.json``)."""
    return json.loads(digits_files(directory).record.read_text(encoding="utf-8"))


def load_runtime(directory: str | Path | None = None, **options):
    """``Runtime.from_pretrained`` on the digits checkpoint and its tokenizer file; ``options`` go through
    (``device``, ``dtype``, ``backend``, ...). The CPU in float32 unless told otherwise."""
    from ..runtime import Runtime

    files = digits_files(directory)
    options.setdefault("device", "cpu")
    return Runtime.from_pretrained(files.model, tokenizer_path=files.tokenizer, **options)
