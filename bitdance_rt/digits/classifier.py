"""The digit classifier the quality gate uses, and its file.

A small MLP over the 64 grey levels of an 8x8 digit (``0..16``): Linear(64 -> H) -> ReLU -> Linear(H -> 10), H = 128
(read from the file). Its hidden activations are the features of the Fréchet distance; the file also stores their mean and covariance over
the real digits (all 1,797 of scikit-learn's set, through the same pixel round trip as generated images), so the
gate needs neither scikit-learn nor the data set. ``tools/train_digits.py`` trains it on a split of the real digits
and records its held-out accuracy in the file.

File: ``torch.save({"state_dict", "feature_mean" [H], "feature_cov" [H, H], "heldout_accuracy"})``, float64
statistics; loaded with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError

NUM_DIGITS = 10
NUM_FEATURES = 64
HIDDEN = 128


class DigitClassifier(nn.Module):
    def __init__(self, hidden: int = HIDDEN):
        super().__init__()
        self.hidden = nn.Linear(NUM_FEATURES, hidden)
        self.out = nn.Linear(hidden, NUM_DIGITS)

    def features(self, digits: torch.Tensor) -> torch.Tensor:
        """``[N, 64]`` grey levels 0..16 -> hidden activations ``[N, H]``."""
        return torch.relu(self.hidden(digits.float() / 16.0))

    def forward(self, digits: torch.Tensor) -> torch.Tensor:
        """``[N, 64]`` grey levels 0..16 -> logits ``[N, 10]``."""
        return self.out(self.features(digits))


class ClassifierFile:
    """A loaded classifier file: the network (eval mode, float32, CPU) and the real digits' feature statistics."""

    def __init__(self, network: DigitClassifier, feature_mean: torch.Tensor, feature_cov: torch.Tensor,
                 heldout_accuracy: float):
        self.network = network
        self.feature_mean = feature_mean
        self.feature_cov = feature_cov
        self.heldout_accuracy = heldout_accuracy


def save_classifier(path: str | Path, network: DigitClassifier, feature_mean: torch.Tensor,
                    feature_cov: torch.Tensor, heldout_accuracy: float) -> None:
    torch.save({"state_dict": {k: v.detach().clone() for k, v in network.state_dict().items()},
                "feature_mean": feature_mean.double(), "feature_cov": feature_cov.double(),
                "heldout_accuracy": float(heldout_accuracy)}, str(path))


def load_classifier(path: str | Path) -> ClassifierFile:
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no digit classifier file there; retrain with tools/train_digits.py.") from None
    missing = [k for k in ("state_dict", "feature_mean", "feature_cov", "heldout_accuracy") if k not in data]
    if missing:
        raise CheckpointError(f"{path}: not a digit classifier file (missing {', '.join(missing)}); retrain with "
                              "tools/train_digits.py.")
    network = DigitClassifier(data["state_dict"]["hidden.weight"].shape[0])
    network.load_state_dict(data["state_dict"])
    network.eval()
    return ClassifierFile(network, data["feature_mean"], data["feature_cov"], data["heldout_accuracy"])
