"""The gate's pieces on known inputs: the pixel round trip, the Fréchet distance, the image grid, the classifier on
real digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bitdance_rt.digits.assets import digits_files
from bitdance_rt.digits.classifier import load_classifier
from bitdance_rt.digits.grid import image_grid
from bitdance_rt.digits.pixels import digits_to_images, images_to_digits
from bitdance_rt.errors import CheckpointError, InvalidRequestError
from bitdance_rt.outputs import to_pixels
from bitdance_rt.quality.digits_gate import frechet_distance, score_digits


def test_pixel_round_trip_keeps_the_digit():
    gen = torch.Generator().manual_seed(0)
    digits = torch.randint(0, 17, (5, 64), generator=gen).float()
    images = digits_to_images(digits, 16)
    assert images.shape == (5, 3, 16, 16) and images.min() >= -1 and images.max() <= 1
    back = images_to_digits(to_pixels(images))
    # bilinear upsampling then 2x2 averaging blurs a little; uint8 pixels round to 1/16 of a grey level
    assert back.shape == (5, 64) and (back - digits).abs().mean() < 2.0
    assert torch.allclose(images_to_digits(images), images_to_digits(to_pixels(images)), atol=0.1)
    flat = torch.full((1, 64), 16.0)
    assert torch.allclose(images_to_digits(to_pixels(digits_to_images(flat, 16))), flat, atol=0.1)
    with pytest.raises(InvalidRequestError):
        images_to_digits(np.zeros((1, 12, 12, 3), dtype=np.uint8))


def test_frechet_distance_of_known_gaussians():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4000, 3, generator=gen, dtype=torch.float64)
    assert frechet_distance(x, x.mean(0), torch.cov(x.T)) == pytest.approx(0.0, abs=1e-6)
    shifted = x + torch.tensor([3.0, 0.0, 0.0], dtype=torch.float64)
    assert frechet_distance(shifted, x.mean(0), torch.cov(x.T)) == pytest.approx(9.0, rel=1e-6)
    # N(0, I) against N(0, 4I): per dimension 1 + 4 - 2·2 = 1
    assert frechet_distance(x, torch.zeros(3, dtype=torch.float64), 4 * torch.eye(3, dtype=torch.float64)) \
        == pytest.approx(3.0, abs=0.15)


def test_image_grid_layout():
    images = np.stack([np.full((2, 2, 3), v, dtype=np.uint8) for v in range(6)])
    grid = image_grid(images, rows=2, scale=3, gap=1, background=9)
    assert grid.shape == (2 * 7 + 1, 3 * 7 + 1, 3)
    assert grid[1, 1, 0] == 0 and grid[1 + 7, 1 + 2 * 7, 0] == 5 and grid[0, 0, 0] == 9
    with pytest.raises(InvalidRequestError):
        image_grid(images, rows=4)


def test_classifier_recognizes_real_digits():
    sklearn = pytest.importorskip("sklearn.datasets")
    data = sklearn.load_digits()
    classifier = load_classifier(digits_files().classifier)
    digits = images_to_digits(to_pixels(digits_to_images(torch.tensor(data.data, dtype=torch.float32), 16)))
    figures = score_digits(digits, torch.tensor(data.target), classifier)
    assert figures["accuracy"] >= 0.95 and figures["mean_confidence"] >= 0.85
    # the full real set against its own statistics
    assert figures["frechet_distance"] == pytest.approx(0.0, abs=1e-3)
    assert classifier.heldout_accuracy >= 0.93


def test_missing_classifier_file_says_how_to_rebuild(tmp_path):
    with pytest.raises(CheckpointError, match="train_digits"):
        load_classifier(tmp_path / "none.pt")
