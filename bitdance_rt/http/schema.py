"""The body of ``POST /v1/images/generations``: a pydantic model of its JSON, the server's caps, and the mapping onto
the runtime's ``ImageRequest``, which the runtime's one validator (``bitdance_rt.request.resolve_request``) then
checks against the loaded model.

Three layers, each naming the field at fault (``ApiError`` 400 with ``param``):
1. ``GenerationBody`` (pydantic, strict): every field's JSON type; unknown fields are refused.
2. The server's limits (``ModelLimits``): ``n``, ``num_sampling_steps`` and prompt length caps, the ``size`` string
   (``WIDTHxHEIGHT`` or ``"auto"``, one of the model's sizes), the OpenAI options' values.
3. ``resolve_request(ImageRequest, family)``: what the model accepts (the condition field, class ids, seeds,
   guidance, ...). Its ``InvalidRequestError`` becomes a 400 (``errors.from_invalid_request``).

Fields (OpenAI's images API, plus extensions marked *): ``prompt`` (text-to-image), ``class_label``*
(class-conditional), ``negative_prompt``*, ``n``, ``size``, ``response_format`` (``"b64_json"`` only),
``output_format`` (``png`` | ``jpeg`` | ``webp``), ``output_compression`` (0-100: the JPEG/WebP encoder's quality),
``quality`` and ``model`` and ``user`` (accepted; they do not change the generation), ``stream``, ``partial_images``
(0-3, with ``stream``), ``stream_events``* (``"openai"``, default, or ``"progress"``: our richer events),
``timeout``* (seconds until the request is cancelled), ``seed``*, ``num_sampling_steps``*, ``guidance_scale``*.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import InvalidRequestError
from ..request import ImageRequest, resolve_request
from .errors import bad_field, from_invalid_request

OUTPUT_FORMATS = ("png", "jpeg", "webp")
QUALITIES = ("auto", "low", "medium", "high", "xhigh", "max", "standard", "hd")  # OpenAI's values
STREAM_EVENTS = ("openai", "progress")
MAX_PARTIAL_IMAGES = 3
MAX_TIMEOUT_S = 24 * 3600.0
_SIZE = re.compile(r"^([0-9]{1,5})x([0-9]{1,5})$")


class GenerationBody(BaseModel):
    """The JSON of a generation request, types only (strict: no "2" for 2, no true for 1, no 1.0 for an integer)."""
    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str | None = None
    class_label: int | None = None
    negative_prompt: str | None = None
    n: int | None = None
    size: str | None = None
    response_format: str | None = None
    output_format: str | None = None
    output_compression: int | None = None
    quality: str | None = None
    model: str | None = None
    user: str | None = None
    stream: bool | None = None
    partial_images: int | None = None
    stream_events: str | None = None
    timeout: float | None = None
    seed: int | None = None
    num_sampling_steps: int | None = None
    guidance_scale: float | None = None


FIELDS = tuple(GenerationBody.model_fields)
# what each field's JSON must be, for type errors
KINDS = {"prompt": "a string", "negative_prompt": "a string", "model": "a string", "user": "a string",
         "quality": "a string", "response_format": "a string", "output_format": "a string",
         "stream_events": "a string", "size": "a string 'WIDTHxHEIGHT' such as '1024x1024', or 'auto'",
         "class_label": "an integer class id", "n": "an integer", "output_compression": "an integer",
         "partial_images": "an integer", "seed": "an integer", "num_sampling_steps": "an integer",
         "stream": "true or false", "timeout": "a number of seconds",
         "guidance_scale": "a finite number (values <= 1 disable classifier-free guidance)"}


@dataclass(frozen=True)
class ModelLimits:
    """What the served model makes and the server allows per request. ``max_n``: the most images one request with
    the model's default guidance can get (a guided image takes two rows of the ``max_batch``-row batch);
    ``max_n_unguided`` with ``guidance_scale <= 1``."""
    family: str
    title: str
    condition_field: str
    num_classes: int | None
    sizes: tuple[tuple[int, int], ...]
    default_size: tuple[int, int]
    default_steps: int
    default_guidance: float
    max_images: int
    max_n: int
    max_n_unguided: int
    max_sampling_steps: int
    max_prompt_chars: int

    def size_names(self) -> list[str]:
        return [size_name(s) for s in self.sizes]


@dataclass(frozen=True)
class GenerationParams:
    """A checked generation request: the runtime's ``ImageRequest`` and how to answer it."""
    request: ImageRequest
    size: str
    stream: bool = False
    stream_events: str = "openai"
    partial_images: int = 0
    output_format: str = "png"
    output_compression: int | None = None
    timeout: float | None = None

    @property
    def n(self) -> int:
        return self.request.num_images


def size_name(size: tuple[int, int]) -> str:
    """``(height, width)`` -> ``"WIDTHxHEIGHT"`` (the OpenAI API's order)."""
    return f"{size[1]}x{size[0]}"


def parse_size(text: str) -> tuple[int, int]:
    """``"WIDTHxHEIGHT"`` -> ``(height, width)``; raises ``ValueError`` if malformed."""
    m = _SIZE.match(text.strip().lower()) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"size must be a string 'WIDTHxHEIGHT' such as '1024x1024', got {text!r}")
    return int(m.group(2)), int(m.group(1))


def batch_rows(runtime) -> int | None:
    """Rows of the runtime's continuous batch (``describe()["serving"]["max_batch"]``), or None if not reported."""
    try:
        rows = runtime.describe().get("serving", {}).get("max_batch")
    except Exception:  # noqa: BLE001 - information only
        return None
    return rows if isinstance(rows, int) and rows > 0 else None


def model_limits(runtime, *, max_images: int, max_sampling_steps: int, max_prompt_chars: int,
                 default_size: tuple[int, int] | None = None) -> ModelLimits:
    """The served model's sizes and defaults (asked of ``runtime.family``) and the server's caps. ``default_size``:
    ``(height, width)``; default the family's."""
    family = runtime.family
    sizes = tuple(family.sizes)
    if not sizes:
        raise InvalidRequestError(f"the model (P = {family.parallel}) can make none of the supported sizes; it "
                                  "cannot be served.")
    if default_size is None:
        default_size = family.default_size
    elif tuple(default_size) not in sizes:
        raise InvalidRequestError(f"default size {size_name(default_size)} (WIDTHxHEIGHT) is not one the model "
                                  f"makes; choose one of {', '.join(size_name(s) for s in sizes)}.")
    rows = batch_rows(runtime)
    guided = float(family.default_guidance) > 1.0
    unguided_n = max_images if rows is None else min(max_images, rows)
    guided_n = max_images if rows is None else min(max_images, rows // 2)
    return ModelLimits(family=family.key, title=family.title, condition_field=family.condition_field,
                       num_classes=getattr(family, "num_classes", None), sizes=sizes,
                       default_size=tuple(default_size), default_steps=int(family.default_steps),
                       default_guidance=float(family.default_guidance), max_images=max_images,
                       max_n=guided_n if guided else unguided_n, max_n_unguided=unguided_n,
                       max_sampling_steps=max_sampling_steps, max_prompt_chars=max_prompt_chars)


# ---------------------------------------------------------------------------------------------------- parsing
def parse_generation(data: dict[str, Any], limits: ModelLimits, family) -> GenerationParams:
    """Check a decoded JSON body (see the module docstring); the first problem raises ``ApiError`` 400."""
    unknown = [k for k in data if k not in FIELDS]
    if unknown:
        raise bad_field(unknown[0], f"unknown field {unknown[0]!r}; this server accepts {', '.join(FIELDS)}.",
                        "unknown_field")
    try:
        body = GenerationBody.model_validate(data)
    except ValidationError as e:
        field = str(e.errors()[0]["loc"][0])
        raise bad_field(field, f"{field} must be {KINDS.get(field, 'of another type')}, got "
                        f"{_shown(data.get(field))}.") from None
    _check_options(body)
    height, width = _size(body.size, limits)
    _check_caps(body, limits)
    request = ImageRequest(prompt=body.prompt, class_label=body.class_label, negative_prompt=body.negative_prompt,
                           height=height, width=width, num_images=1 if body.n is None else body.n,
                           num_sampling_steps=body.num_sampling_steps, guidance_scale=body.guidance_scale,
                           seed=body.seed, output_type="pil")
    try:
        resolve_request(request, family)  # the runtime's validator decides what the model accepts
    except InvalidRequestError as e:
        raise from_invalid_request(e) from None
    return GenerationParams(request=request, size=size_name((height, width)), stream=bool(body.stream),
                            stream_events=body.stream_events or "openai", partial_images=body.partial_images or 0,
                            output_format=body.output_format or "png", output_compression=body.output_compression,
                            timeout=body.timeout)


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _one_of(name: str, value: str | None, allowed: tuple[str, ...]) -> None:
    if value is not None and value not in allowed:
        raise bad_field(name, f"{name} must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}.")


def _int_range(name: str, value: int | None, lo: int, hi: int) -> None:
    if value is not None and not lo <= value <= hi:
        raise bad_field(name, f"{name} must be an integer in {lo}..{hi}, got {value}.")


def _check_options(b: GenerationBody) -> None:
    """The OpenAI options and the streaming and deadline extensions."""
    if b.response_format is not None and b.response_format != "b64_json":
        if b.response_format == "url":
            raise bad_field("response_format", "response_format 'url' is not supported: this server stores no "
                            "files and returns images inline; use 'b64_json'.", "unsupported_response_format")
        raise bad_field("response_format", f"response_format must be 'b64_json', got {b.response_format!r}.")
    _one_of("output_format", b.output_format, OUTPUT_FORMATS)
    _int_range("output_compression", b.output_compression, 0, 100)
    _one_of("quality", b.quality, QUALITIES)
    _one_of("stream_events", b.stream_events, STREAM_EVENTS)
    _int_range("partial_images", b.partial_images, 0, MAX_PARTIAL_IMAGES)
    if b.timeout is not None and not (math.isfinite(b.timeout) and 0 < b.timeout <= MAX_TIMEOUT_S):
        raise bad_field("timeout", f"timeout must be a number of seconds in (0, {MAX_TIMEOUT_S:g}], got "
                        f"{b.timeout!r}.")


def _size(text: str | None, limits: ModelLimits) -> tuple[int, int]:
    if text is None or text == "auto":
        return limits.default_size
    try:
        size = parse_size(text)
    except ValueError as e:
        raise bad_field("size", f"{e}.") from None
    if size not in limits.sizes:
        raise bad_field("size", f"size {text!r} is not one this model makes; choose one of "
                        f"{', '.join(limits.size_names())} (WIDTHxHEIGHT), or 'auto'.", "unsupported_size")
    return size


def _check_caps(b: GenerationBody, limits: ModelLimits) -> None:
    """The server's per-request caps, and the condition field's presence (asked of the family's field name)."""
    field = limits.condition_field
    others = [f for f in ("prompt", "class_label", "negative_prompt") if f != field and getattr(b, f) is not None]
    if getattr(b, field) is None and not others:
        what = "a non-empty string describing the image" if field == "prompt" else \
            f"a class id in 0..{(limits.num_classes or 1000) - 1}"
        raise bad_field(field, f"{field} is required: {what}.", "missing_field")
    for name in ("prompt", "negative_prompt"):
        text = getattr(b, name)
        if text is None:
            continue
        if name == "prompt" and not text.strip():
            raise bad_field(name, f"{name} must not be empty.")
        if len(text) > limits.max_prompt_chars:
            raise bad_field(name, f"{name} has {len(text)} characters; at most {limits.max_prompt_chars} are "
                            "accepted.")
    _int_range("n", b.n, 1, limits.max_images)
    _int_range("num_sampling_steps", b.num_sampling_steps, 1, limits.max_sampling_steps)
