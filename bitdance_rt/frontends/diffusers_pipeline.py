"""``BitDancePipeline``: a ``diffusers.DiffusionPipeline`` with diffusers' calling conventions, running on
``bitdance_rt.Runtime`` (the engine on CUDA, the reference backend on the CPU).

    pipe = BitDancePipeline.from_pretrained("models/BitDance-14B-64x", torch_dtype=torch.bfloat16)
    image = pipe("a red fox in the snow", num_inference_steps=50, guidance_scale=7.5,
                 generator=torch.Generator("cuda").manual_seed(42)).images[0]

It loads the release's layout and the community diffusers port's layout (``port_layout.py``). A list of prompts
(or of class labels) runs as one batch of the runtime. Where diffusers' meanings cannot be met exactly:

- ``num_inference_steps`` is the diffusion head's sampling steps per autoregressive (AR) step (the runtime's
  ``num_sampling_steps``); the number of AR steps is fixed by the image size and the model's tokens per step.
- ``generator``: one ``torch.Generator`` drives the whole call, as ``Runtime.generate(generator=...)`` does (the
  reference backend draws every noise tensor from it in the release's order; the engine draws one seed per image
  from it and keys the image's noise by that seed). A list gives image i its own generator: image i is then exactly
  the image ``pipe(prompt_i, generator=generator[i])`` makes alone, which the runtime can only guarantee by making
  those images one call after another, so a list of generators is not batched. No generator: a fresh seed.
- ``callback_on_step_end(pipe, i, t, callback_kwargs)`` is called after every AR step: ``i`` is the AR step just
  finished (0-based), ``t`` a 0-d tensor holding the AR steps still to come (it counts down like a timestep) and
  ``callback_kwargs`` is empty (no tensor inputs exist between AR steps; asking for any is an error). Setting
  ``pipe._interrupt = True`` stops the call at the end of that AR step; an interrupted call returns no images (a
  batch of zero), since the runtime's loop hands back no partial tokens.
- ``output_type``: see ``diffusers_outputs.py`` ("np"/"pt" are float [0, 1]; "latent" gives the binary tokens).
"""

from __future__ import annotations

import numbers
import secrets
from pathlib import Path
from typing import Any

import torch

try:
    from diffusers import DiffusionPipeline
    from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
except ModuleNotFoundError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("BitDancePipeline needs diffusers: pip install 'bitdance-rt[diffusers]'") from e

from ..errors import InvalidRequestError
from ..platform import resolve_device
from ..quantization.formats import check_quantization
from ..runtime import Runtime
from .diffusers_outputs import check_output_type, diffusers_images, empty_images, runtime_output_type
from .model_placement import ModelOffload, runtime_on
from .port_layout import release_view

# from_pretrained keywords of diffusers that have no meaning here and are accepted without effect
IGNORED_LOAD_KWARGS = ("trust_remote_code", "custom_pipeline", "use_safetensors", "low_cpu_mem_usage",
                       "local_files_only", "variant")
RUNTIME_OPTIONS = ("max_batch", "memory_budget", "batch_invariant", "op_providers")


class _Interrupted(Exception):
    """Raised from the step callback to end the runtime's loop when ``pipe._interrupt`` was set."""


class BitDancePipeline(DiffusionPipeline):
    """diffusers' pipeline conventions on a BitDance ``Runtime`` (see the module docstring for the mapping)."""

    model_cpu_offload_seq = "backbone->projector->head->decoder"
    _callback_tensor_inputs: list[str] = []

    def __init__(self, runtime: Runtime, backend: str = "auto", runtime_options: dict | None = None):
        super().__init__()
        self.register_modules(runtime=runtime)
        self._backend_request = backend
        self._runtime_options = dict(runtime_options or {})
        self._offload: ModelOffload | None = None
        self._interrupt = False

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *, torch_dtype: torch.dtype | None = None,
                        quantization: Any = None, device: str | torch.device | None = None,
                        device_map: str | None = None, backend: str = "auto",
                        tokenizer_path: str | Path | None = None, subfolder: str | None = None,
                        trust_pickle: bool = False, dtype: torch.dtype | None = None,
                        **kwargs) -> "BitDancePipeline":
        """Load a local model folder or file: the release's layout (a text-to-image directory, a class-conditional
        ``.pt`` checkpoint with ``tokenizer_path=``) or the community diffusers port's (a folder with
        ``model_index.json``; ``subfolder=`` picks one ImageNet model of the port's collection).

        ``torch_dtype`` (or ``dtype``): default bfloat16 on CUDA, float32 on the CPU. ``device`` (or a device name
        as ``device_map``): default CUDA when present, else the CPU; weights are read straight to it (unlike
        diffusers, which loads on the CPU), so ``.to("cuda")`` afterwards costs nothing. ``backend``: the
        runtime's (``"auto"``: the engine on CUDA, the reference on the CPU). ``quantization``: the runtime's (None,
        ``"fp8"`` or ``"int8"``: 8-bit weights quantized at load), checked before anything is read. ``max_batch``, ``memory_budget``,
        ``batch_invariant``, ``op_providers``: the runtime's serving options. No Hub access: pass a local folder."""
        unknown = sorted(set(kwargs) - set(IGNORED_LOAD_KWARGS) - set(RUNTIME_OPTIONS))
        if unknown:
            raise InvalidRequestError(f"BitDancePipeline.from_pretrained() got unknown argument(s) "
                                      f"{', '.join(unknown)}; it takes torch_dtype, quantization, device (or "
                                      "device_map), backend, tokenizer_path, subfolder, trust_pickle and the runtime "
                                      "options "
                                      f"{', '.join(RUNTIME_OPTIONS)}.", param=unknown[0])
        if torch_dtype is not None and dtype is not None and torch_dtype != dtype:
            raise InvalidRequestError("pass torch_dtype or dtype, not both.", param="dtype")
        options = {k: kwargs[k] for k in RUNTIME_OPTIONS if k in kwargs}
        load = dict(device=_device_from_map(device, device_map), dtype=torch_dtype or dtype, backend=backend,
                    trust_pickle=trust_pickle, quantization=check_quantization(quantization, "cpu"), **options)
        path = Path(pretrained_model_name_or_path)
        if subfolder:
            path = path / subfolder
        with release_view(path, tokenizer_path) as paths:
            runtime = Runtime.from_pretrained(paths.model, tokenizer_path=paths.tokenizer, **load)
        return cls(runtime, backend=backend, runtime_options=options)

    def save_pretrained(self, *args, **kwargs):
        raise NotImplementedError("BitDancePipeline reads the release's files (or the diffusers port's) and writes "
                                  "none; keep the folder you loaded it from.")

    # ------------------------------------------------------------------ what the pipeline is
    @property
    def family(self):
        """The model family object (``key``, ``title``, ``condition_field``, ``sizes``, defaults, ...)."""
        return self.runtime.family

    @property
    def device(self) -> torch.device:
        return self._offload.device if self._offload is not None else self.runtime.device

    @property
    def _execution_device(self) -> torch.device:
        return self.device

    @property
    def dtype(self) -> torch.dtype:
        return self.runtime.dtype

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    # ------------------------------------------------------------------ placement
    def to(self, *args, **kwargs) -> "BitDancePipeline":
        """``to(device)``, ``to(dtype)``, ``to(device, dtype)`` or ``to(device=..., dtype=...)``: the weights are
        moved and the runtime rebuilt there (model offload, if enabled, ends); nothing happens when the model is
        already there. Returns the pipeline."""
        device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
        kwargs.pop("silence_dtype_warnings", None)
        if kwargs:
            raise InvalidRequestError(f"to() got unknown argument(s) {', '.join(sorted(kwargs))}; it takes a device "
                                      "and/or a dtype.")
        for arg in args:
            if isinstance(arg, torch.dtype):
                dtype = arg
            elif isinstance(arg, (str, torch.device)):
                device = arg
            else:
                raise InvalidRequestError(f"to() takes a device and/or a dtype, got {arg!r}.")
        target = resolve_device(device if device is not None else self.device)
        if self._offload is None and target == self.runtime.device and dtype in (None, self.runtime.dtype):
            return self  # already there (the usual .to("cuda") after loading straight to the GPU)
        self.runtime.stop_worker(cancel=True)
        self._offload = None
        self.runtime = runtime_on(self.family, target, dtype or self.dtype, self._backend_request,
                                  self._runtime_options)
        return self

    def enable_model_cpu_offload(self, gpu_id: int | None = None, device: str | torch.device = "cuda") -> None:
        """Keep the model in host memory and bring its parts to ``device`` (``cuda:gpu_id``) only while they work:
        per call, the autoregressive parts (backbone, head, projector) while tokens are made, then the decoder
        alone. For cards that cannot hold the whole model at once, or are shared between calls; each call pays
        the copies and, on the engine backends, a fresh engine. ``device="cpu"`` runs the same stages without
        moving anything (a check of the plumbing). ``.to(device)`` ends it."""
        target = torch.device(device)
        if gpu_id is not None:
            target = torch.device(target.type, gpu_id)
        self.runtime.stop_worker(cancel=True)
        self._offload = ModelOffload(self.family, target, self.dtype, self._backend_request, self._runtime_options)
        self.runtime = Runtime(self.family, torch.device("cpu"), self.dtype, "reference", **self._runtime_options)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, negative_prompt: str | list[str] | None = None,
                 height: int | None = None, width: int | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, num_images_per_prompt: int = 1,
                 generator: torch.Generator | list[torch.Generator] | None = None, output_type: str = "pil",
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs: list[str] | None = None,
                 return_dict: bool = True, class_labels: int | list[int] | None = None, **kwargs):
        """Generate ``num_images_per_prompt`` images per prompt (text-to-image) or per class label
        (class-conditional; ``class_labels=``, or the labels as the first argument). Returns
        ``ImagePipelineOutput(images=...)``, or ``(images,)`` with ``return_dict=False``."""
        if kwargs:
            raise InvalidRequestError(f"BitDancePipeline does not take {', '.join(sorted(kwargs))}: it has no latents "
                                      "or embeddings to pass in; it takes prompt (or class_labels), negative_prompt, "
                                      "height, width, num_inference_steps, guidance_scale, num_images_per_prompt, "
                                      "generator, output_type, callback_on_step_end and return_dict.",
                                      param=sorted(kwargs)[0])
        output_type = check_output_type(output_type)
        conditions, prompt_call = self._conditions(prompt, class_labels, negative_prompt)
        images_per = _check_count(num_images_per_prompt)
        batch = len(conditions) * images_per
        generators = _generator_list(generator, batch)
        _check_callback(callback_on_step_end, callback_on_step_end_tensor_inputs, self._callback_tensor_inputs)
        settings = dict(height=height, width=width, num_sampling_steps=num_inference_steps,
                        guidance_scale=guidance_scale)
        if generators is None:
            jobs = [(conditions, images_per, generator)]
        else:  # image i of the batch (prompt-major) alone, with its own generator
            jobs = [([c], 1, generators[k * images_per + j])
                    for k, c in enumerate(conditions) for j in range(images_per)]
        self._interrupt = False
        try:
            outputs = [self._run(job, prompt_call, settings, output_type, callback_on_step_end) for job in jobs]
        except _Interrupted:
            outputs = None
        images = self._collect(outputs, output_type, settings)
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    def _conditions(self, prompt, class_labels, negative_prompt) -> tuple[list[dict], bool]:
        """One dict of ``generate`` keywords per prompt or label; whether this family takes prompts."""
        if self.family.condition_field == "prompt":
            if class_labels is not None:
                raise InvalidRequestError("class_labels is for class-conditional models; this text-to-image model "
                                          "takes prompt.", param="class_labels")
            if prompt is None:
                raise InvalidRequestError("this text-to-image model needs a prompt (a string or a list of strings).",
                                          param="prompt")
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            if isinstance(negative_prompt, (list, tuple)):
                if len(negative_prompt) != len(prompts):
                    raise InvalidRequestError(f"negative_prompt has {len(negative_prompt)} entries for "
                                              f"{len(prompts)} prompts; give one string or one per prompt.",
                                              param="negative_prompt")
                negatives = list(negative_prompt)
            else:
                negatives = [negative_prompt] * len(prompts)
            return [{"prompt": p, "negative_prompt": n} for p, n in zip(prompts, negatives)], True
        if class_labels is None and _is_label_list(prompt):
            prompt, class_labels = None, prompt  # pipe(207) or pipe([207, 360]), as diffusers' DiT pipeline
        if prompt is not None or negative_prompt is not None:
            raise InvalidRequestError("this class-conditional model takes class_labels (ImageNet class ids), not "
                                      "prompts.", param="prompt" if prompt is not None else "negative_prompt")
        if class_labels is None:
            raise InvalidRequestError(f"this class-conditional model needs class_labels (ids 0.."
                                      f"{self.family.num_classes - 1}).", param="class_labels")
        labels = class_labels.tolist() if isinstance(class_labels, torch.Tensor) else class_labels
        labels = [labels] if isinstance(labels, numbers.Integral) else list(labels)
        return [{"class_label": c} for c in labels], False

    def _run(self, job, prompt_call: bool, settings: dict, output_type: str, callback):
        """One ``Runtime.generate`` call for a group of conditions sharing a generator (or two stages when the
        model is offloaded). Returns the runtime's ``GenerationOutput``."""
        conditions, images_per, generator = job
        if prompt_call:
            condition = {"prompt": [c["prompt"] for c in conditions],
                         "negative_prompt": _negatives([c["negative_prompt"] for c in conditions])}
        else:
            condition = {"class_labels": [c["class_label"] for c in conditions]}
        want = runtime_output_type(output_type)
        bar = self.progress_bar(total=0)
        step_callback = self._step_callback(callback, bar)
        common = dict(**condition, **settings, num_images=images_per, callback=step_callback)
        try:
            if self._offload is None:
                return self.runtime.generate(**common, generator=generator, output_type=want)
            if generator is None:  # one generator for both stages, as generate uses its own for both
                generator = torch.Generator(device=self._offload.device).manual_seed(secrets.randbits(63))
            made = self._offload.generating(lambda rt: rt.generate(**common, generator=generator,
                                                                   output_type="tokens"))
            if want != "tokens":
                made.images = self._offload.decoding(lambda rt: rt.decode_tokens(
                    made.tokens, made.height, made.width, generator=generator, output_type=want))
            return made
        finally:
            bar.close()

    def _step_callback(self, callback, bar):
        def on_step(step: int, total: int) -> None:
            if bar.total != total:
                bar.total = total
                bar.refresh()
            bar.update(1)
            if callback is not None:
                result = callback(self, step - 1, torch.tensor(total - step), {})
                if result is not None and not isinstance(result, dict):
                    raise InvalidRequestError(f"callback_on_step_end returned {type(result).__name__}; return the "
                                              "callback_kwargs dict (or None).", param="callback_on_step_end")
            if self._interrupt:
                raise _Interrupted()
        return on_step

    def _collect(self, outputs, output_type: str, settings: dict):
        if outputs is None:
            h, w = settings["height"], settings["width"]
            if h is None or w is None:
                h, w = self.family.default_size
            grid = self.family.grid(h, w)
            return empty_images(output_type, h, w, grid[0] * grid[1], self.family.token_channels)
        if len(outputs) == 1:
            return diffusers_images(outputs[0], output_type)
        parts = [diffusers_images(out, output_type) for out in outputs]
        if output_type == "pil":
            return [image for part in parts for image in part]
        if output_type == "np":
            import numpy as np

            return np.concatenate(parts)
        return torch.cat(parts)


# ---------------------------------------------------------------------------------------------------- helpers
def _device_from_map(device, device_map):
    if device_map is None:
        return device
    if device is not None:
        raise InvalidRequestError("pass device or device_map, not both.", param="device_map")
    if device_map in ("auto", "balanced"):
        return None
    if isinstance(device_map, (str, torch.device)):
        return device_map
    raise InvalidRequestError(f"device_map={device_map!r}: the runtime keeps a model on one device; pass a device "
                              "name ('cuda', 'cuda:1', 'cpu') or use enable_model_cpu_offload().",
                              param="device_map")


def _check_count(n) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise InvalidRequestError(f"num_images_per_prompt must be an integer >= 1, got {n!r}.",
                                  param="num_images_per_prompt")
    return int(n)


def _is_label_list(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Integral):
        return True
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point()
    return isinstance(value, (list, tuple)) and bool(value) and all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value)


def _negatives(negatives: list):
    """``generate``'s negative_prompt: None when no prompt has one; else one string per prompt."""
    if all(n is None for n in negatives):
        return None
    if any(n is None for n in negatives):
        raise InvalidRequestError("give a negative prompt for every prompt, or for none.", param="negative_prompt")
    return negatives


def _generator_list(generator, batch: int) -> list[torch.Generator] | None:
    """The per-image generators of a list (None for one generator or none), checked against the batch size."""
    if generator is None or isinstance(generator, torch.Generator):
        return None
    if not isinstance(generator, (list, tuple)) or not all(isinstance(g, torch.Generator) for g in generator):
        raise InvalidRequestError(f"generator must be a torch.Generator or a list of them, got {generator!r}.",
                                  param="generator")
    if len(generator) != batch:
        raise InvalidRequestError(f"You have passed a list of generators of length {len(generator)}, but requested an "
                                  f"effective batch size of {batch} (prompts x num_images_per_prompt). Make sure the "
                                  "batch size matches the length of the generators.", param="generator")
    return list(generator)


def _check_callback(callback, tensor_inputs, allowed: list[str]) -> None:
    if callback is None:
        return
    if not callable(callback):
        raise InvalidRequestError("callback_on_step_end must be callable as callback(pipe, step, timestep, "
                                  "callback_kwargs).", param="callback_on_step_end")
    requested = list(tensor_inputs or []) + list(getattr(callback, "tensor_inputs", None) or [])
    bad = [name for name in requested if name not in allowed]
    if bad:
        raise InvalidRequestError(f"callback_on_step_end_tensor_inputs {bad}: BitDancePipeline has no tensors to hand "
                                  "to step callbacks (the image is made of binary tokens sampled patch by patch, with "
                                  "no latents between steps); pass callback_on_step_end_tensor_inputs=[].",
                                  param="callback_on_step_end_tensor_inputs")
