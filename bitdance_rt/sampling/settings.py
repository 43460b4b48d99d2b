"""``SampleSettings``: what one bulk sampling run makes (the Python face of ``bitdance-rt sample``), and the checks
that need no model.

Class-conditional runs set ``num_samples`` (and ``labels``); text-to-image runs set ``prompts`` (and ``layout``,
``images_per_prompt``). Fields left ``None`` take the model's defaults (size, sampling steps, guidance) or the
layout's (images per prompt). ``batch_size`` is the number of images each rank keeps in its continuous batch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import InvalidRequestError
from ..request import MAX_SEED, check_int

DEFAULT_BATCH_SIZE = 16
DEFAULT_TIMEOUT_S = 1800.0
DEFAULT_IMAGES_PER_PROMPT = {"geneval": 4, "dpg": 4, "plain": 1}
DPG_MAX_IMAGES = 4  # the DPG-Bench evaluator crops at most 4 images (a 2x2 grid) out of each file


@dataclass
class SampleSettings:
    out: str | Path
    model: str | Path | None = None          # None when a loaded Runtime is passed to ``sample``
    tokenizer: str | Path | None = None
    # class-conditional
    num_samples: int | None = None
    labels: str = "balanced"                 # "balanced", "random" or a labels file
    png: bool = False                        # keep images/{i:06d}.png beside samples.npz
    # text-to-image
    prompts: str | Path | None = None
    layout: str | None = None                # "geneval", "dpg", "plain"; None: from the prompts file's name
    images_per_prompt: int | None = None
    negative_prompt: str | None = None
    # both
    height: int | None = None
    width: int | None = None
    num_sampling_steps: int | None = None
    guidance_scale: float | None = None
    seed: int = 0
    batch_size: int = DEFAULT_BATCH_SIZE
    device: str | None = None
    dtype: str | None = None
    backend: str = "auto"
    trust_pickle: bool = False
    # Reserved for the 8-bit weights work: the weight format to load (None: the checkpoint's weights as they
    # are). It is part of a run's recorded settings, so a rerun with another quantization is refused.
    quantization: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S     # longest wait for another rank (its model loading, its last images)
    progress: bool = True                    # rank 0's progress bar and messages on stderr

    @property
    def text_to_image(self) -> bool:
        """Whether the settings describe a prompts run (the model must then take prompts)."""
        return self.prompts is not None

    def as_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


def precheck(s: SampleSettings) -> None:
    """Every check that needs no model, so a mistake is reported before a (possibly 14B) model loads."""
    if s.out is None or str(s.out) == "":
        raise InvalidRequestError("--out is required: the folder the samples go to.", param="out")
    check_int("--batch-size", s.batch_size, 1)
    check_int("--seed", s.seed, 0, MAX_SEED)
    for name, value in (("--steps", s.num_sampling_steps), ("--height", s.height), ("--width", s.width)):
        if value is not None:
            check_int(name, value, 1)
    if s.guidance_scale is not None and (isinstance(s.guidance_scale, bool)
                                         or not isinstance(s.guidance_scale, (int, float))
                                         or not math.isfinite(s.guidance_scale)):
        raise InvalidRequestError(f"--guidance must be a finite number, got {s.guidance_scale!r}.",
                                  param="guidance_scale")
    if not isinstance(s.timeout_s, (int, float)) or not s.timeout_s > 0:
        raise InvalidRequestError(f"--timeout must be a positive number of seconds, got {s.timeout_s!r}.",
                                  param="timeout")
    if s.quantization is not None and s.quantization not in ("fp8", "int8"):
        raise InvalidRequestError(f"--quantization={s.quantization!r} is unknown; choose fp8 (compute capability "
                                  ">= 8.9), int8 or leave it out (the checkpoint's precision).", param="quantization")
    if s.text_to_image:
        for name, value, default in (("--num-samples", s.num_samples, None), ("--labels", s.labels, "balanced"),
                                     ("--png", s.png, False)):
            if value != default:
                raise InvalidRequestError(f"{name} is for class-conditional runs; a run with --prompts makes "
                                          "images-per-prompt images of every prompt.", param=name.lstrip("-"))
        if s.images_per_prompt is not None:
            check_int("--images-per-prompt", s.images_per_prompt, 1)
        return
    for name, value in (("--layout", s.layout), ("--images-per-prompt", s.images_per_prompt),
                        ("--negative-prompt", s.negative_prompt)):
        if value is not None:
            raise InvalidRequestError(f"{name} is for text-to-image runs (with --prompts FILE).",
                                      param=name.lstrip("-"))
    if s.num_samples is not None:
        check_int("--num-samples", s.num_samples, 1)
    if s.num_samples is None and s.labels in ("balanced", "random"):
        raise InvalidRequestError("a class-conditional run needs --num-samples N (e.g. 50000 for an ImageNet FID), "
                                  "or --labels FILE with one class id a line; a text-to-image run needs --prompts "
                                  "FILE.", param="num_samples")
    if s.num_samples is not None and s.seed + s.num_samples - 1 > MAX_SEED:
        raise InvalidRequestError(f"--seed {s.seed} with {s.num_samples} images passes the largest seed "
                                  f"{MAX_SEED} (image i uses seed + i); use a smaller seed.", param="seed")
