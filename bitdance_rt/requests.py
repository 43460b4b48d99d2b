"""Checking and normalising the arguments of ``Runtime.generate`` and ``Runtime.submit`` before any work starts, and
their defaults."""

from __future__ import annotations

import math
import numbers
import secrets
from dataclasses import dataclass
from typing import Callable

import torch

from .errors import InvalidRequestError
from .outputs import OUTPUT_TYPES
from .reference.c2i_backbone import NUM_CLASSES

T2I_DEFAULTS = {"height": 1024, "width": 1024, "num_sampling_steps": 50, "guidance_scale": 7.5}
C2I_STEPS = 100
# the release's sampling flags, by (width, layers, P); other shapes fall back to C2I_GUIDANCE_FALLBACK
C2I_GUIDANCE = {(768, 24, 1): 3.2, (768, 24, 4): 3.9, (768, 24, 16): 6.1, (1024, 32, 1): 4.0, (1280, 40, 1): 4.55}
C2I_GUIDANCE_FALLBACK = 4.0


@dataclass
class Sampling:
    num_steps: int
    guidance: float
    num_images: int
    output_type: str
    generator: torch.Generator
    seed: int | None
    callback: Callable[[int, int], None] | None


def check_int(name: str, value, minimum: int) -> int:
    """An integer (not a bool, not a float) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InvalidRequestError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def check_size(name: str, value) -> int:
    """An image side in pixels: a positive int (not a float, not a string)."""
    return check_int(name, value, 1)


def check_sampling(num_steps, guidance, num_images, output_type, seed, generator, callback,
                   device: torch.device) -> Sampling:
    steps = check_int("num_sampling_steps", num_steps, 1)
    if isinstance(guidance, bool) or not isinstance(guidance, numbers.Real) or not math.isfinite(guidance):
        raise InvalidRequestError(f"guidance_scale must be a finite number, got {guidance!r} "
                                  "(values <= 1 disable classifier-free guidance).")
    images = check_int("num_images", num_images, 1)
    if output_type not in OUTPUT_TYPES:
        raise InvalidRequestError(f"output_type={output_type!r}; choose one of {', '.join(OUTPUT_TYPES)}.")
    if callback is not None and not callable(callback):
        raise InvalidRequestError("callback must be callable as callback(step, total_steps).")
    if generator is not None:
        if seed is not None:
            raise InvalidRequestError("pass either seed or generator, not both.")
        if not isinstance(generator, torch.Generator):
            raise InvalidRequestError(f"generator must be a torch.Generator, got {type(generator).__name__}.")
        return Sampling(steps, float(guidance), images, output_type, generator, None, callback)
    if seed is None:
        seed = secrets.randbits(63)
    seed = check_int("seed", seed, 0)
    gen = torch.Generator(device=device).manual_seed(seed)
    return Sampling(steps, float(guidance), images, output_type, gen, seed, callback)


def check_prompts(prompt, negative_prompt) -> tuple[list[str], list[str | None]]:
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise InvalidRequestError(f"prompt must be a string or a non-empty list of strings, got {prompt!r}.")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise InvalidRequestError(f"prompt[{i}] is {type(p).__name__}, expected str.")
    if negative_prompt is None or isinstance(negative_prompt, str):
        negatives = [negative_prompt] * len(prompts)
    elif isinstance(negative_prompt, (list, tuple)) and len(negative_prompt) == len(prompts) \
            and all(isinstance(n, str) for n in negative_prompt):
        negatives = list(negative_prompt)
    else:
        raise InvalidRequestError(f"negative_prompt must be a string or a list of {len(prompts)} strings "
                                  f"(one per prompt), got {negative_prompt!r}.")
    return list(prompts), negatives


def check_labels(class_labels, num_classes: int = NUM_CLASSES) -> list[int]:
    labels = [class_labels] if isinstance(class_labels, numbers.Integral) and not isinstance(class_labels, bool) \
        else class_labels
    if isinstance(labels, torch.Tensor):
        labels = labels.tolist()
    if not isinstance(labels, (list, tuple)) or not labels:
        raise InvalidRequestError(f"class_labels must be an int or a non-empty list of ints, got {class_labels!r}.")
    for i, c in enumerate(labels):
        if isinstance(c, bool) or not isinstance(c, numbers.Integral) or not 0 <= c < num_classes:
            raise InvalidRequestError(f"class_labels[{i}] = {c!r} is not a class id of this model (0..{num_classes - 1}).")
    return [int(c) for c in labels]


def row_seeds(sampling: Sampling, rows: int) -> list[int]:
    """One noise seed per image row for the engine, so a row's noise does not depend on its batch neighbours:
    row r of a call with seed s uses seed ``s + r``; with a caller's generator, each row's seed is drawn from it."""
    if sampling.seed is not None:
        return [sampling.seed + r for r in range(rows)]
    return torch.randint(0, 2 ** 62, (rows,), generator=sampling.generator,
                         device=sampling.generator.device).tolist()


def row_generators(sampling: Sampling, rows: int, device: torch.device) -> list[torch.Generator]:
    """``row_seeds`` as generators on ``device``."""
    return [torch.Generator(device=device).manual_seed(s) for s in row_seeds(sampling, rows)]
