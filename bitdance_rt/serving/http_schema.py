"""The body of ``POST /v1/images/generations``: parsing and checking it against the loaded model's limits.

``ModelLimits`` says what the served model accepts (family, sizes as ``(height, width)``, the default size, the
most images per request, sampling steps and prompt length); ``model_limits(runtime, ...)`` builds it from a
``Runtime`` (text-to-image sizes are the release's list filtered by the model's token grid; class-conditional
models make 256x256 only). ``parse_generation(body, limits)`` turns the raw request bytes into
``GenerationParams`` or raises ``ApiError`` 400 naming the field.

Fields (OpenAI's images API, plus extensions marked *):
``prompt`` (text-to-image, required), ``class_label``* (class-conditional, required, 0..999), ``negative_prompt``*,
``n`` (1..max, default 1), ``size`` (``"WIDTHxHEIGHT"``, default the model's), ``response_format`` (``"b64_json"``
only), ``seed``*, ``num_sampling_steps``*, ``guidance_scale``*, ``stream``* (bool), ``model`` and ``user``
(accepted and ignored).
"""

from __future__ import annotations

import json
import math
import numbers
import re
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidRequestError
from ..reference.c2i_backbone import NUM_CLASSES
from ..sizes import C2I_SIZE, T2I_SIZES, token_grid
from .http_errors import ApiError, bad_field

T2I_DEFAULT_SIZE = (1024, 1024)
MAX_SEED = 2 ** 63 - 1
FIELDS = ("prompt", "class_label", "negative_prompt", "n", "size", "response_format", "seed", "num_sampling_steps",
          "guidance_scale", "stream", "model", "user")
_SIZE = re.compile(r"^([0-9]{1,5})x([0-9]{1,5})$")


@dataclass(frozen=True)
class ModelLimits:
    family: str
    sizes: tuple[tuple[int, int], ...]
    default_size: tuple[int, int]
    max_images: int
    max_sampling_steps: int
    max_prompt_chars: int

    def size_names(self) -> list[str]:
        return [size_name(s) for s in self.sizes]


@dataclass(frozen=True)
class GenerationParams:
    n: int
    height: int
    width: int
    prompt: str | None = None
    class_label: int | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    num_sampling_steps: int | None = None
    guidance_scale: float | None = None
    stream: bool = False

    def submit_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``Runtime.submit`` (unset optional fields are left to the runtime's defaults)."""
        kwargs: dict[str, Any] = {"num_images": self.n, "height": self.height, "width": self.width,
                                  "output_type": "pil"}
        for name in ("prompt", "class_label", "negative_prompt", "seed", "num_sampling_steps", "guidance_scale"):
            value = getattr(self, name)
            if value is not None:
                kwargs[name] = value
        return kwargs


def size_name(size: tuple[int, int]) -> str:
    """``(height, width)`` -> ``"WIDTHxHEIGHT"`` (the OpenAI API's order)."""
    return f"{size[1]}x{size[0]}"


def model_limits(runtime, *, max_images: int, max_sampling_steps: int, max_prompt_chars: int,
                 default_size: tuple[int, int] | None = None) -> ModelLimits:
    """The sizes ``runtime``'s model can make and the server's per-request caps. ``default_size``: ``(height,
    width)``; default 1024x1024 for text-to-image models (the runtime's default) if allowed, else the first size."""
    sizes = runtime.family.sizes
    if not sizes:
        raise InvalidRequestError(f"the model (P = {runtime.parallel}) can make none of the supported sizes; "
                                  "it cannot be served.")
    if default_size is None:
        default_size = runtime.family.default_size
    elif tuple(default_size) not in sizes:
        raise InvalidRequestError(f"default size {size_name(default_size)} (WIDTHxHEIGHT) is not one the model "
                                  f"makes; choose one of {', '.join(size_name(s) for s in sizes)}.")
    return ModelLimits(runtime.family.key, sizes, tuple(default_size), max_images, max_sampling_steps, max_prompt_chars)


def parse_size(text: str) -> tuple[int, int]:
    """``"WIDTHxHEIGHT"`` -> ``(height, width)``; raises ``ValueError`` if malformed."""
    m = _SIZE.match(text.strip().lower()) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"size must be a string 'WIDTHxHEIGHT' such as '1024x1024', got {text!r}")
    return int(m.group(2)), int(m.group(1))


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def decode_json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise ApiError(400, "the request body is not UTF-8 text; send a JSON object.", code="invalid_json") from None
    except ValueError as e:
        raise ApiError(400, f"the request body is not valid JSON ({e}); send a JSON object such as "
                       '{"prompt": "a red fox", "size": "1024x1024"}.', code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, got a JSON {type(data).__name__}.",
                       code="invalid_json")
    return data


def _int_field(data: dict[str, Any], name: str, lo: int, hi: int, default: int | None) -> int | None:
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise bad_field(name, f"{name} must be an integer in {lo}..{hi}, got {json.dumps(value)}.")
    return value


def _text_field(data: dict[str, Any], name: str, max_chars: int, required: bool) -> str | None:
    value = data.get(name)
    if value is None:
        if required:
            raise bad_field(name, f"{name} is required: a non-empty string describing the image.", "missing_field")
        return None
    if not isinstance(value, str):
        raise bad_field(name, f"{name} must be a string, got a JSON {type(value).__name__}.")
    if required and not value.strip():
        raise bad_field(name, f"{name} must not be empty.")
    if len(value) > max_chars:
        raise bad_field(name, f"{name} has {len(value)} characters; at most {max_chars} are accepted.")
    return value


def parse_generation(body: bytes, limits: ModelLimits) -> GenerationParams:
    """Check every field of a generation request; the first bad one raises ``ApiError`` 400 naming it."""
    data = decode_json_object(body)
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise bad_field(unknown[0], f"unknown field {unknown[0]!r}; this server accepts {', '.join(FIELDS)}.",
                        "unknown_field")

    fmt = data.get("response_format")
    if fmt is not None and fmt != "b64_json":
        if fmt == "url":
            raise bad_field("response_format", "response_format 'url' is not supported: this server stores no "
                            "files and returns images inline; use 'b64_json'.", "unsupported_response_format")
        raise bad_field("response_format", f"response_format must be 'b64_json', got {json.dumps(fmt)}.")
    for name in ("model", "user"):
        if data.get(name) is not None and not isinstance(data[name], str):
            raise bad_field(name, f"{name} must be a string, got a JSON {type(data[name]).__name__}.")
    stream = data.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad_field("stream", f"stream must be true or false, got {json.dumps(stream)}.")

    prompt = negative = label = None
    if limits.family == "t2i":
        if data.get("class_label") is not None:
            raise bad_field("class_label", "class_label is for class-conditional models; this text-to-image model "
                            "takes a prompt.")
        prompt = _text_field(data, "prompt", limits.max_prompt_chars, required=True)
        negative = _text_field(data, "negative_prompt", limits.max_prompt_chars, required=False)
    else:
        for name in ("prompt", "negative_prompt"):
            if data.get(name) is not None:
                raise bad_field(name, f"{name} is for text-to-image models; this class-conditional model takes "
                                f"class_label (an ImageNet class id 0..{NUM_CLASSES - 1}).")
        if data.get("class_label") is None:
            raise bad_field("class_label", f"class_label is required: an ImageNet class id 0..{NUM_CLASSES - 1}.",
                            "missing_field")
        label = _int_field(data, "class_label", 0, NUM_CLASSES - 1, None)

    n = _int_field(data, "n", 1, limits.max_images, 1)
    size = data.get("size")
    if size is None:
        height, width = limits.default_size
    else:
        try:
            height, width = parse_size(size)
        except ValueError as e:
            raise bad_field("size", f"{e}.") from None
        if (height, width) not in limits.sizes:
            raise bad_field("size", f"size {size!r} is not one this model makes; choose one of "
                            f"{', '.join(limits.size_names())} (WIDTHxHEIGHT).", "unsupported_size")
    seed = _int_field(data, "seed", 0, MAX_SEED, None)
    steps = _int_field(data, "num_sampling_steps", 1, limits.max_sampling_steps, None)
    guidance = data.get("guidance_scale")
    if guidance is not None:
        if isinstance(guidance, bool) or not isinstance(guidance, numbers.Real) or not math.isfinite(guidance):
            raise bad_field("guidance_scale", f"guidance_scale must be a finite number, got {json.dumps(guidance)} "
                            "(values <= 1 disable classifier-free guidance).")
        guidance = float(guidance)
    return GenerationParams(n=n, height=height, width=width, prompt=prompt, class_label=label,
                            negative_prompt=negative, seed=seed, num_sampling_steps=steps, guidance_scale=guidance,
                            stream=bool(stream))
