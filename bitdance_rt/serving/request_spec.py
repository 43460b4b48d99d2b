"""``RequestSpec``: an ``ImageRequest`` checked against the loaded model, defaults filled, ready to schedule.

``resolve_request(request, family, model, default_guidance)`` raises ``InvalidRequestError`` (what was wrong and
what to do) before anything is queued. Noise seeds are per image: image j of a request with seed s uses ``s + j``,
the seed row j of a ``generate`` call with that seed gets, so one request of n images and ``generate(...,
num_images=n)`` draw the same noise. ``image_seeds`` overrides them (``generate`` with a caller's generator).
"""

from __future__ import annotations

import math
import numbers
import secrets
from dataclasses import dataclass

from ..errors import InvalidRequestError
from ..outputs import OUTPUT_TYPES
from ..requests import C2I_STEPS, T2I_DEFAULTS, check_int, check_size
from ..sizes import check_t2i_size, token_grid
from .request import ImageRequest


@dataclass(frozen=True)
class RequestSpec:
    family: str
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


def _check_text(name: str, value) -> str | None:
    if value is not None and not isinstance(value, str):
        raise InvalidRequestError(f"{name} must be a string, got {type(value).__name__}.")
    return value


def resolve_request(request: ImageRequest, family: str, model, default_guidance: float,
                    image_seeds: list[int] | None = None) -> RequestSpec:
    """Check ``request`` for a model of ``family`` ("t2i" or "c2i"); ``model`` gives P and the decoder's
    downsampling; ``default_guidance`` is the class-conditional default for this model."""
    if not isinstance(request, ImageRequest):
        raise InvalidRequestError(f"submit() takes an ImageRequest or keyword arguments, got "
                                  f"{type(request).__name__}.")
    r = request
    if family == "t2i":
        if r.class_label is not None:
            raise InvalidRequestError("class_label is for class-conditional models; this model takes a prompt.")
        if not isinstance(r.prompt, str):
            raise InvalidRequestError(f"this text-to-image model needs a prompt (one string per request), got "
                                      f"{r.prompt!r}.")
        _check_text("negative_prompt", r.negative_prompt)
        height = check_size("height", T2I_DEFAULTS["height"] if r.height is None else r.height)
        width = check_size("width", T2I_DEFAULTS["width"] if r.width is None else r.width)
        check_t2i_size(height, width)
        steps = T2I_DEFAULTS["num_sampling_steps"] if r.num_sampling_steps is None else r.num_sampling_steps
        guidance = T2I_DEFAULTS["guidance_scale"] if r.guidance_scale is None else r.guidance_scale
        label = None
    else:
        if r.prompt is not None or r.negative_prompt is not None:
            raise InvalidRequestError("this class-conditional model takes a class_label, not a prompt.")
        label = r.class_label
        num_classes = model.config.num_classes  # digits: until the rewrite
        if isinstance(label, bool) or not isinstance(label, numbers.Integral) or not 0 <= label < num_classes:
            raise InvalidRequestError(f"this class-conditional model needs class_label, a class id in "
                                      f"0..{num_classes - 1}; got {label!r}.")
        label = int(label)
        size = (model.config.grid * model.decoder_layout.downsample,) * 2  # digits: until the rewrite
        height = check_size("height", size[0] if r.height is None else r.height)
        width = check_size("width", size[1] if r.width is None else r.width)
        if (height, width) != size:
            raise InvalidRequestError(f"class-conditional models make {size[0]}x{size[1]} images only, "
                                      f"got {height}x{width}.")
        steps = C2I_STEPS if r.num_sampling_steps is None else r.num_sampling_steps
        guidance = default_guidance if r.guidance_scale is None else r.guidance_scale
    steps = check_int("num_sampling_steps", steps, 1)
    if isinstance(guidance, bool) or not isinstance(guidance, numbers.Real) or not math.isfinite(guidance):
        raise InvalidRequestError(f"guidance_scale must be a finite number, got {guidance!r} "
                                  "(values <= 1 disable classifier-free guidance).")
    images = check_int("num_images", r.num_images, 1)
    if r.output_type not in OUTPUT_TYPES:
        raise InvalidRequestError(f"output_type={r.output_type!r}; choose one of {', '.join(OUTPUT_TYPES)}.")
    parallel = model.parallel
    grid = token_grid(height, width, model.decoder_layout.downsample, parallel)
    seed = r.seed
    if image_seeds is None:
        seed = secrets.randbits(63) if seed is None else check_int("seed", seed, 0)
        image_seeds = [seed + j for j in range(images)]
    elif len(image_seeds) != images:
        raise InvalidRequestError(f"{len(image_seeds)} image seeds given for {images} images.")
    return RequestSpec(family=family, prompt=r.prompt, negative_prompt=r.negative_prompt, class_label=label,
                       height=height, width=width, grid=grid, parallel=parallel, num_images=images, num_steps=steps,
                       guidance=float(guidance), seed=seed, image_seeds=tuple(int(s) for s in image_seeds),
                       output_type=r.output_type)
