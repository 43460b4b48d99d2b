"""What a caller asks for and its one validator, shared by ``Runtime.generate``, ``Runtime.submit``, the CLI and the
HTTP server.

- ``ImageRequest``: one prompt (text-to-image) or one class label (class-conditional), its size, sampling settings,
  seed and output type. Fields left ``None`` take the model's defaults (``families``).
- ``resolve_request(request, family)``: the request checked against the loaded model, defaults filled, as a
  ``RequestSpec`` ready to schedule; raises ``InvalidRequestError`` (what was wrong, what to do, ``param`` naming
  the field) before anything is queued.
- ``resolve_generate(family, ...)``: ``generate``'s arguments (lists of prompts or labels, a seed or a generator, a
  callback) as one ``RequestSpec`` per prompt or label, through the same checks.

Noise seeds are per image: image j of a request with seed s uses ``s + j``, the seed row j of a ``generate`` call
with that seed gets, so one request of n images and ``generate(..., num_images=n)`` draw the same noise.
"""

from __future__ import annotations

import math
import numbers
import secrets
from dataclasses import dataclass, fields
from typing import Any, Callable

import torch

from .errors import InvalidRequestError
from .outputs import OUTPUT_TYPES


@dataclass(frozen=True)
class ImageRequest:
    prompt: str | None = None
    class_label: int | None = None
    negative_prompt: str | None = None
    height: int | None = None
    width: int | None = None
    num_images: int = 1
    num_sampling_steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    output_type: str = "pil"

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> "ImageRequest":
        """An ``ImageRequest`` from keyword arguments; unknown names are refused with the list."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise InvalidRequestError(f"submit() got unknown argument(s) {', '.join(unknown)}; an ImageRequest has "
                                      f"{', '.join(names)}.", param=unknown[0])
        return cls(**kwargs)


@dataclass(frozen=True)
class RequestSpec:
    """An ``ImageRequest`` resolved against the loaded model."""
    prompt: str | None
    negative_prompt: str | None
    class_label: int | None
    height: int
    width: int
    grid: tuple[int, int]
    parallel: int
    num_images: int
    num_steps: int
    guidance: float
    seed: int | None
    image_seeds: tuple[int, ...]
    output_type: str

    @property
    def guided(self) -> bool:
        return self.guidance > 1.0

    @property
    def num_ar(self) -> int:
        return self.grid[0] * self.grid[1] // self.parallel

    @property
    def rows(self) -> int:
        """Cache rows the request occupies: one per image, two when guided."""
        return self.num_images * (2 if self.guided else 1)


# ---------------------------------------------------------------------------------------------------- field checks
def check_int(name: str, value, minimum: int, maximum: int | None = None) -> int:
    """An integer (not a bool, not a float) of at least ``minimum`` (and at most ``maximum``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InvalidRequestError(f"{name} must be an integer >= {minimum}, got {value!r}.", param=name.lstrip("-"))
    if maximum is not None and value > maximum:
        raise InvalidRequestError(f"{name} must be at most {maximum}, got {value!r}.", param=name.lstrip("-"))
    return int(value)


def check_guidance(value, name: str = "guidance_scale") -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise InvalidRequestError(f"{name} must be a finite number, got {value!r} (values <= 1 disable "
                                  "classifier-free guidance).", param=name.lstrip("-"))
    return float(value)


def check_output_type(value) -> str:
    if value not in OUTPUT_TYPES:
        raise InvalidRequestError(f"output_type={value!r}; choose one of {', '.join(OUTPUT_TYPES)}.",
                                  param="output_type")
    return value


MAX_SEED = 2 ** 63 - 1


# ---------------------------------------------------------------------------------------------------- the validator
def resolve_request(request: ImageRequest, family, image_seeds: list[int] | None = None) -> RequestSpec:
    """Check ``request`` against ``family`` (its model's sizes, classes and defaults). ``image_seeds`` overrides
    the per-image seeds (``generate`` with a caller's generator)."""
    if not isinstance(request, ImageRequest):
        raise InvalidRequestError(f"submit() takes an ImageRequest or keyword arguments, got "
                                  f"{type(request).__name__}.")
    r = request
    prompt, negative, label = family.check_condition(r.prompt, r.negative_prompt, r.class_label)
    default_h, default_w = family.default_size
    height = check_int("height", default_h if r.height is None else r.height, 1)
    width = check_int("width", default_w if r.width is None else r.width, 1)
    grid = family.grid(height, width)
    steps = check_int("num_sampling_steps", family.default_steps if r.num_sampling_steps is None
                      else r.num_sampling_steps, 1)
    guidance = check_guidance(family.default_guidance if r.guidance_scale is None else r.guidance_scale)
    images = check_int("num_images", r.num_images, 1)
    output_type = check_output_type(r.output_type)
    seed = r.seed
    if image_seeds is None:
        seed = secrets.randbits(63) if seed is None else check_int("seed", seed, 0, MAX_SEED)
        image_seeds = [seed + j for j in range(images)]
    elif len(image_seeds) != images:
        raise InvalidRequestError(f"{len(image_seeds)} image seeds given for {images} images.")
    return RequestSpec(prompt=prompt, negative_prompt=negative, class_label=label, height=height, width=width,
                       grid=grid, parallel=family.parallel, num_images=images, num_steps=steps, guidance=guidance,
                       seed=seed, image_seeds=tuple(int(s) for s in image_seeds), output_type=output_type)


# ---------------------------------------------------------------------------------------------------- generate
@dataclass
class GenerateCall:
    """``generate``'s arguments resolved: one spec per prompt or label (same size, steps, guidance), the noise
    source (``seed``, or the caller's ``generator`` when ``seed`` is None) and the callback."""
    specs: list[RequestSpec]
    generator: torch.Generator
    seed: int | None
    callback: Callable[[int, int], None] | None

    @property
    def first(self) -> RequestSpec:
        return self.specs[0]


def _prompt_list(prompt, negative_prompt) -> tuple[list[str], list[str | None]]:
    if prompt is None:
        raise InvalidRequestError("this text-to-image model needs a prompt (a string or a list of strings).",
                                  param="prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise InvalidRequestError(f"prompt must be a string or a non-empty list of strings, got {prompt!r}.",
                                  param="prompt")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise InvalidRequestError(f"prompt[{i}] is {type(p).__name__}, expected str.", param="prompt")
    if negative_prompt is None or isinstance(negative_prompt, str):
        negatives = [negative_prompt] * len(prompts)
    elif isinstance(negative_prompt, (list, tuple)) and len(negative_prompt) == len(prompts) \
            and all(isinstance(n, str) for n in negative_prompt):
        negatives = list(negative_prompt)
    else:
        raise InvalidRequestError(f"negative_prompt must be a string or a list of {len(prompts)} strings "
                                  f"(one per prompt), got {negative_prompt!r}.", param="negative_prompt")
    return list(prompts), negatives


def _label_list(class_labels, family) -> list[int]:
    if class_labels is None:
        raise InvalidRequestError(f"this class-conditional model needs class_labels (class ids "
                                  f"0..{family.num_classes - 1}).", param="class_labels")
    labels = [class_labels] if isinstance(class_labels, numbers.Integral) and not isinstance(class_labels, bool) \
        else class_labels
    if isinstance(labels, torch.Tensor):
        labels = labels.tolist()
    if not isinstance(labels, (list, tuple)) or not labels:
        raise InvalidRequestError(f"class_labels must be an int or a non-empty list of ints, got {class_labels!r}.",
                                  param="class_labels")
    return [family.check_label(c, f"class_labels[{i}]") for i, c in enumerate(labels)]


def resolve_generate(family, prompt, class_labels, negative_prompt, *, height, width, num_sampling_steps,
                     guidance_scale, seed, generator, num_images, output_type, callback,
                     device: torch.device) -> GenerateCall:
    """``Runtime.generate``'s arguments checked; every error is raised before any work starts."""
    if family.condition_field == "prompt":
        if class_labels is not None:
            raise InvalidRequestError("class_labels is for class-conditional models; this model takes prompts.",
                                      param="class_labels")
        prompts, negatives = _prompt_list(prompt, negative_prompt)
        conditions = [{"prompt": p, "negative_prompt": n} for p, n in zip(prompts, negatives)]
    else:
        if prompt is not None or negative_prompt is not None:
            raise InvalidRequestError("this class-conditional model takes class_labels, not prompts.",
                                      param="prompt" if prompt is not None else "negative_prompt")
        conditions = [{"class_label": c} for c in _label_list(class_labels, family)]
    if callback is not None and not callable(callback):
        raise InvalidRequestError("callback must be callable as callback(step, total_steps).", param="callback")
    if generator is not None:
        if seed is not None:
            raise InvalidRequestError("pass either seed or generator, not both.", param="seed")
        if not isinstance(generator, torch.Generator):
            raise InvalidRequestError(f"generator must be a torch.Generator, got {type(generator).__name__}.",
                                      param="generator")
    else:
        seed = secrets.randbits(63) if seed is None else check_int("seed", seed, 0, MAX_SEED)
        generator = torch.Generator(device=device).manual_seed(seed)
    images = check_int("num_images", num_images, 1)
    specs = []
    for i, condition in enumerate(conditions):
        request = ImageRequest(**condition, height=height, width=width, num_images=images,
                               num_sampling_steps=num_sampling_steps, guidance_scale=guidance_scale,
                               seed=None if seed is None else seed + i * images, output_type=output_type)
        # with a generator the image seeds are drawn later (only the engine needs them); placeholders keep the spec
        specs.append(resolve_request(request, family, image_seeds=None if seed is not None else [0] * images))
    return GenerateCall(specs, generator, seed, callback)


def image_seeds(call: GenerateCall) -> list[list[int]]:
    """One noise seed per image of each spec, for the engine (an image's noise never depends on its neighbours):
    image r of a call with seed s uses ``s + r``; with a caller's generator each is drawn from it."""
    if call.seed is not None:
        return [list(spec.image_seeds) for spec in call.specs]
    total = sum(spec.num_images for spec in call.specs)
    drawn = torch.randint(0, 2 ** 62, (total,), generator=call.generator, device=call.generator.device).tolist()
    out, start = [], 0
    for spec in call.specs:
        out.append(drawn[start:start + spec.num_images])
        start += spec.num_images
    return out
