"""scikit-learn's digits (1,797 8x8 images, 10 classes, shipped inside scikit-learn: no download) as tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Digits:
    features: torch.Tensor   # float32 [N, 64], grey levels 0..16
    labels: torch.Tensor     # int64 [N], 0..9

    def __len__(self) -> int:
        return self.labels.shape[0]


def load() -> Digits:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("tools/train_digits.py needs scikit-learn: pip install -e '.[train]'") from None
    data = load_digits()
    return Digits(torch.tensor(data.data, dtype=torch.float32), torch.tensor(data.target, dtype=torch.int64))


def split(digits: Digits, heldout_fraction: float, generator: torch.Generator) -> tuple[Digits, Digits]:
    """A random split into (train, held out)."""
    order = torch.randperm(len(digits), generator=generator)
    cut = int(round(len(digits) * (1.0 - heldout_fraction)))
    train, held = order[:cut], order[cut:]
    return (Digits(digits.features[train], digits.labels[train]),
            Digits(digits.features[held], digits.labels[held]))
