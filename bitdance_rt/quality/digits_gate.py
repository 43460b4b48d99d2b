"""The digits quality gate: generate digits with a runtime, label them with the shipped digit classifier, report
class accuracy and sample-quality figures.

``evaluate(runtime, labels, seeds)`` makes ``len(labels) · len(seeds)`` images: per seed s, one image per label,
label i with noise seed ``s + i`` on the engine (``via="submit"``: one request per label with ``seed = s + i``;
``via="generate"``: one ``generate(class_labels=labels, seed=s)`` call, whose row i the engine seeds with s + i; the
reference backend's ``generate`` draws the whole call's noise from one generator seeded with s instead). Space the
seeds by at least ``len(labels)`` (the recorded gate uses 0, 100, 200, ...) so that no two engine images share their
noise. Each image is pooled back to the data set's 8x8 grey levels (``pixels.images_to_digits``) and classified.
Figures:

- ``accuracy``: fraction of images classified as the label they were generated for;
- ``mean_confidence``: mean classifier probability of the requested label;
- ``frechet_distance``: Fréchet distance between Gaussians fitted to the classifier's hidden features of the
  generated images and of all real digits (stored in the classifier file); lower is closer to real digits. With
  a hundred images it is biased upward by the sample size: compare it with the training record's
  ``real_frechet_distance`` (as many real digits), not with 0.

The function takes any runtime of the digits model: another backend, another dtype, later 8-bit weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..digits.assets import digits_files
from ..digits.classifier import ClassifierFile, load_classifier
from ..digits.pixels import images_to_digits
from ..errors import InvalidRequestError

VIA = ("generate", "submit")


def generate_images(runtime, labels: Sequence[int], seeds: Sequence[int], *, num_sampling_steps: int,
                    guidance_scale: float, via: str = "generate") -> np.ndarray:
    """uint8 images ``[len(seeds) · len(labels), H, W, 3]``, seed-major (all labels of seeds[0] first)."""
    if via not in VIA:
        raise InvalidRequestError(f"via={via!r}; choose 'generate' (Runtime.generate) or 'submit' (submit/step).")
    if not labels or not seeds:
        raise InvalidRequestError("evaluate needs at least one label and one seed.")
    args = {"num_sampling_steps": num_sampling_steps, "guidance_scale": guidance_scale, "output_type": "np"}
    batches = []
    for seed in seeds:
        if via == "generate":
            batches.append(runtime.generate(class_labels=list(labels), seed=seed, **args).images)
            continue
        handles = [runtime.submit(class_label=label, seed=seed + i, **args) for i, label in enumerate(labels)]
        while not all(h.done for h in handles):
            runtime.step()
        batches.extend(h.result().images for h in handles)
    return np.concatenate(batches)


def frechet_distance(features: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> float:
    """Fréchet distance between the Gaussian of ``features [N, D]`` and ``N(mean, cov)`` (float64):
    ``|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C2^1/2 C1 C2^1/2)^1/2)``."""
    f = features.double()
    mu, c1 = f.mean(0), torch.cov(f.T) if f.shape[0] > 1 else torch.zeros(f.shape[1], f.shape[1], dtype=f.dtype)
    evals, evecs = torch.linalg.eigh(cov.double())
    root = evecs @ torch.diag(evals.clamp_min(0).sqrt()) @ evecs.T
    cross = torch.linalg.eigvalsh(root @ c1 @ root).clamp_min(0).sqrt().sum()
    return float(((mu - mean.double()) ** 2).sum() + torch.trace(c1) + torch.trace(cov.double()) - 2 * cross)


def score_digits(digits: torch.Tensor, wanted: torch.Tensor, classifier: ClassifierFile) -> dict:
    """Figures of 8x8 digits ``[N, 64]`` (grey levels 0..16) generated for labels ``wanted [N]``."""
    with torch.no_grad():
        feats = classifier.network.features(digits)
        probs = torch.softmax(classifier.network.out(feats), dim=-1)
    predicted = probs.argmax(-1)
    correct = predicted == wanted
    per_class = {str(c): float(correct[wanted == c].double().mean()) for c in sorted(set(wanted.tolist()))}
    return {
        "accuracy": float(correct.double().mean()),
        "mean_confidence": float(probs.gather(1, wanted[:, None]).double().mean()),
        "frechet_distance": frechet_distance(feats, classifier.feature_mean, classifier.feature_cov),
        "num_images": int(wanted.shape[0]),
        "per_class_accuracy": per_class,
        "predicted": predicted.tolist(),
    }


def evaluate(runtime, labels: Sequence[int], seeds: Sequence[int], *, num_sampling_steps: int | None = None,
             guidance_scale: float | None = None, via: str = "generate",
             classifier: ClassifierFile | str | Path | None = None) -> dict:
    """Generate ``labels`` x ``seeds`` with ``runtime`` and score them (see the module docstring).

    Sampling steps and guidance default to the shipped run's recorded settings; ``classifier`` defaults to the
    shipped classifier (or pass a loaded ``ClassifierFile`` or a path). Returns ``accuracy``, ``mean_confidence``,
    ``frechet_distance``, ``num_images``, ``per_class_accuracy``, ``predicted`` (per image, seed-major) and the
    settings used.
    """
    if num_sampling_steps is None or guidance_scale is None:
        from ..digits.assets import load_record

        sampling = load_record()["sampling"]
        num_sampling_steps = sampling["num_sampling_steps"] if num_sampling_steps is None else num_sampling_steps
        guidance_scale = sampling["guidance_scale"] if guidance_scale is None else guidance_scale
    if classifier is None:
        classifier = digits_files().classifier
    if not isinstance(classifier, ClassifierFile):
        classifier = load_classifier(classifier)
    images = generate_images(runtime, labels, seeds, num_sampling_steps=num_sampling_steps,
                             guidance_scale=guidance_scale, via=via)
    wanted = torch.tensor([label for _ in seeds for label in labels], dtype=torch.int64)
    figures = score_digits(images_to_digits(images), wanted, classifier)
    figures.update({"labels": [int(x) for x in labels], "seeds": [int(s) for s in seeds], "via": via,
                    "backend": runtime.backend, "num_sampling_steps": num_sampling_steps,
                    "guidance_scale": guidance_scale})
    return figures
