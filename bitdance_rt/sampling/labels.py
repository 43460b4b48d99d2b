"""Class labels of a class-conditional sampling run: one per image index.

- ``balanced`` (the default, as the release samples ImageNet for FID): image i has class ``i·C // N`` for N images
  and C classes. When N is a multiple of C this is ``i // (N / C)``, the release's ``arange(C).repeat(N / C)``;
  otherwise every class still gets ``N // C`` or one more image, spread evenly, and ``LabelPlan.notice`` says so.
- ``random``: classes drawn uniformly from a CPU ``torch.Generator`` seeded with the run's seed (the same on every
  rank and machine).
- a file: one class id a line (blank lines and lines starting with ``#`` are skipped), e.g. the ``labels.txt`` a
  run writes beside its samples.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import InputFileError
from .input_lines import numbered_lines, read_input_bytes

LABEL_MODES = ("balanced", "random")


@dataclass(frozen=True)
class LabelPlan:
    mode: str                 # "balanced" | "random" | "file"
    labels: list[int]         # class of image i
    source: str | None        # the labels file, for mode "file"
    notice: str | None        # how the labels fall when N is not a multiple of the class count

    @property
    def digest(self) -> str:
        """sha256 of the label list: what a rerun must match."""
        return hashlib.sha256(json.dumps(self.labels).encode()).hexdigest()


def balanced_labels(n: int, num_classes: int) -> list[int]:
    return [i * num_classes // n for i in range(n)]


def balanced_notice(n: int, num_classes: int) -> str | None:
    if n % num_classes == 0:
        return None
    q, r = divmod(n, num_classes)
    if q == 0:
        return (f"{n} samples for {num_classes} classes: only {n} classes get an image, one each, spread evenly "
                f"(image i has class i*{num_classes}//{n}). For class-balanced statistics (FID) use a multiple of "
                f"{num_classes}.")
    return (f"{n} samples is not a multiple of the model's {num_classes} classes: the labels stay spread evenly "
            f"(image i has class i*{num_classes}//{n}), so {r} classes get {q + 1} images and {num_classes - r} get "
            f"{q}. The release pads with class 0 instead; for results comparable with published FIDs use a multiple "
            f"of {num_classes} (e.g. {num_classes * max(q, 1)} or {num_classes * (q + 1)}).")


def random_labels(n: int, num_classes: int, seed: int) -> list[int]:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randint(0, num_classes, (n,), generator=gen).tolist()


def read_label_file(path: Path, num_classes: int | None) -> list[int]:
    """The class ids of a labels file; ``num_classes`` None skips the range check (before the model is loaded)."""
    path = Path(path)
    labels = []
    for number, text in numbered_lines(path, read_input_bytes(path, "labels file (one class id a line)")):
        text = text.strip()
        if not text or text.startswith("#"):
            continue
        try:
            label = int(text)
        except ValueError:
            raise InputFileError(path, number, f"{text[:40]!r} is not a class id; a labels file holds one "
                                               "non-negative integer a line.", param="labels") from None
        if label < 0 or (num_classes is not None and label >= num_classes):
            if num_classes is None:
                raise InputFileError(path, number, f"class {label} is negative; class ids start at 0.",
                                     param="labels")
            raise InputFileError(path, number, f"class {label} is out of range: this model has {num_classes} "
                                               f"classes, 0..{num_classes - 1}.", param="labels")
        labels.append(label)
    if not labels:
        raise InputFileError(path, None, "holds no class ids; write one integer a line.", param="labels")
    return labels


def plan_labels(spec: str, num_samples: int | None, num_classes: int, seed: int) -> LabelPlan:
    """The labels of a run: ``spec`` is ``"balanced"``, ``"random"`` or a labels file; ``num_samples`` may be None
    only with a file (its length is then the count)."""
    if spec in LABEL_MODES:
        if num_samples is None:
            from ..errors import InvalidRequestError

            raise InvalidRequestError(f"--labels {spec} needs --num-samples N (e.g. 50000 for an ImageNet FID).",
                                      param="num_samples")
        if spec == "balanced":
            return LabelPlan("balanced", balanced_labels(num_samples, num_classes), None,
                             balanced_notice(num_samples, num_classes))
        return LabelPlan("random", random_labels(num_samples, num_classes, seed), None, None)
    labels = read_label_file(Path(spec), num_classes)
    if num_samples is not None and num_samples != len(labels):
        raise InputFileError(Path(spec), None, f"holds {len(labels)} class ids but --num-samples is {num_samples}; "
                                               "leave --num-samples out to sample one image per line, or fix the "
                                               "file.", param="num_samples")
    return LabelPlan("file", labels, str(spec), None)
