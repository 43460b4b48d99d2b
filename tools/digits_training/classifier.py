"""Training the gate's digit classifier (``bitdance_rt.digits.classifier``) on real digits.

Inputs go through the same round trip as generated images (8x8 -> model image -> uint8 pixels -> 8x8), so the
classifier sees real and generated digits alike. Trained on a split, scored on the held-out rest; the feature
statistics for the Fréchet distance are taken over every real digit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bitdance_rt.digits.classifier import DigitClassifier
from bitdance_rt.digits.pixels import digits_to_images, images_to_digits
from bitdance_rt.outputs import to_pixels

from .data import Digits

NOISE = 1.0  # grey levels of Gaussian noise added to the training inputs (a regulariser)


def round_trip(features: torch.Tensor, side: int) -> torch.Tensor:
    """Real 8x8 digits as the gate sees a generated image: upsampled, quantized to uint8 pixels, pooled back."""
    return images_to_digits(to_pixels(digits_to_images(features, side)))


def train_classifier(train: Digits, heldout: Digits, everything: Digits, side: int, *, steps: int,
                     generator: torch.Generator) -> tuple[DigitClassifier, torch.Tensor, torch.Tensor, float]:
    """Returns (classifier in eval mode, feature mean [H], feature covariance [H, H], held-out accuracy)."""
    net = DigitClassifier()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-3)
    x, y = round_trip(train.features, side), train.labels
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (256,), generator=generator)
        noisy = x[idx] + NOISE * torch.randn(idx.shape[0], x.shape[1], generator=generator)
        loss = F.cross_entropy(net(noisy), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(round_trip(heldout.features, side)).argmax(-1) == heldout.labels).double().mean().item()
        feats = net.features(round_trip(everything.features, side)).double()
    return net, feats.mean(0), torch.cov(feats.T), accuracy
