"""``Runtime``: load a released BitDance checkpoint and generate images from it.

The family is told from the files: a directory holding ``config.json`` is a text-to-image model; a file is a
class-conditional ``torch.save`` checkpoint. Generation validates every argument before it starts and keeps all
per-call state (caches, generator) local, so a failed call leaves the runtime as it was.

Serving (``bitdance_rt/serving``): ``submit`` queues one request and returns a handle, ``step`` advances every
active request by one AR step (continuous batching), ``start_worker`` runs the steps in a background thread,
``stats`` reports the queue and rates. These run on the engine's structures: the runtime's engine on the
``"triton"`` and ``"cuda"`` backends; on ``"reference"`` an engine built over the same weights with the PyTorch
operations (``ops_chain="torch"``: any device, no Triton, no CUDA graphs), made on first use.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import torch

from .backends import build_engine, resolve_backend
from .devices import resolve_device, resolve_dtype
from .errors import CheckpointError, InvalidRequestError
from .loading.c2i_checkpoint import C2IModel, load_c2i
from .loading.t2i_checkpoint import T2IModel, is_t2i_directory, load_t2i
from .outputs import GenerationOutput, format_images
from .pipelines.c2i_generate import generate_c2i_tokens
from .pipelines.t2i_generate import generate_t2i_tokens
from .reference.patch_order import from_patch_raster
from .reference.sampler import generator_noise
from .requests import (C2I_GUIDANCE, C2I_GUIDANCE_FALLBACK, C2I_STEPS, T2I_DEFAULTS, Sampling, check_labels,
                       check_prompts, check_sampling, check_size, row_seeds)
from .serving.handle import RequestHandle
from .serving.limits import DEFAULT_MAX_BATCH, check_max_batch, parse_memory_budget
from .serving.request import ImageRequest
from .serving.request_spec import RequestSpec
from .serving.scheduler import Scheduler
from .sizes import check_t2i_size, token_grid

__all__ = ["Runtime", "T2I_DEFAULTS", "C2I_STEPS", "C2I_GUIDANCE", "C2I_GUIDANCE_FALLBACK"]


class Runtime:
    """A loaded model. Build it with :meth:`from_pretrained`."""

    def __init__(self, model: T2IModel | C2IModel, device: torch.device, dtype: torch.dtype, backend: str, *,
                 max_batch: int = DEFAULT_MAX_BATCH, memory_budget: int | str | None = None,
                 batch_invariant: bool = True):
        self.model = model
        self.device = device
        self.dtype = dtype
        self.backend = backend
        self.family = "t2i" if isinstance(model, T2IModel) else "c2i"
        self._limits = {"max_batch": check_max_batch(max_batch), "memory_budget": parse_memory_budget(memory_budget),
                        "batch_invariant": bool(batch_invariant)}
        self.engine = build_engine(model, backend, device) if backend in ("triton", "cuda") else None
        self._serving_engine = self.engine
        self._device_lock = threading.RLock()  # every device pass of the schedulers and previews
        self._serving_setup = threading.Lock()
        self._generate_lock = threading.Lock()
        self._scheduler: Scheduler | None = None
        self._generate_scheduler: Scheduler | None = None

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device | None = None,
                        dtype: torch.dtype | str | None = None, backend: str = "auto",
                        tokenizer_path: str | Path | None = None, trust_pickle: bool = False,
                        max_batch: int = DEFAULT_MAX_BATCH, memory_budget: int | str | None = None,
                        batch_invariant: bool = True) -> "Runtime":
        """Load a model. ``path``: a text-to-image directory or a class-conditional checkpoint file;
        ``tokenizer_path``: the class-conditional tokenizer file (``ae_d16c32.pt``); ``backend``: ``"auto"``
        (Triton engine on CUDA, reference elsewhere), ``"reference"``, ``"triton"`` or ``"cuda"`` (see
        ``backends.py``). Serving limits (``submit``/``step``): ``max_batch`` rows per continuous batch (an image is
        2 rows when guided), ``memory_budget`` in bytes or as ``"20GiB"`` (None: no limit), ``batch_invariant``
        (every step computes the whole batch, so an image does not depend on what shares it)."""
        check_max_batch(max_batch)
        parse_memory_budget(memory_budget)
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        backend = resolve_backend(backend, dev)
        path = Path(path)
        if not path.exists():
            raise CheckpointError(f"{path} does not exist; pass a text-to-image model directory or a "
                                  "class-conditional checkpoint file.")
        with torch.inference_mode(False), torch.no_grad():
            if is_t2i_directory(path):
                if tokenizer_path is not None:
                    raise InvalidRequestError("tokenizer_path is only for class-conditional checkpoints; the "
                                              "text-to-image directory carries its own tokenizer.")
                model: T2IModel | C2IModel = load_t2i(path, dev, dt)
            elif path.is_file():
                model = load_c2i(path, Path(tokenizer_path) if tokenizer_path is not None else None, dev, dt,
                                 trust_pickle=trust_pickle)
            else:
                raise CheckpointError(f"{path} is a directory without config.json: not a text-to-image model "
                                      "directory (and a class-conditional checkpoint is a single file).")
        return cls(model, dev, dt, backend, max_batch=max_batch, memory_budget=memory_budget,
                   batch_invariant=batch_invariant)

    # ------------------------------------------------------------------ information
    @property
    def parallel(self) -> int:
        return self.model.parallel

    def describe(self) -> dict[str, Any]:
        """Family, backend, device, dtype, P and sizes of the loaded model."""
        m = self.model
        info: dict[str, Any] = {"family": self.family, "backend": self.backend, "device": str(self.device),
                                "dtype": str(self.dtype).replace("torch.", ""), "tokens_per_step": m.parallel,
                                "token_channels": m.head_config.token_channels,
                                "head": {"width": m.head_config.width, "blocks": m.head_config.depth,
                                         "kind": m.head_config.block_kind},
                                "decoder_downsample": m.decoder_layout.downsample}
        parts = {"backbone": m.backbone, "head": m.head, "decoder": m.decoder}
        if isinstance(m, T2IModel):
            c = m.backbone_config
            info["backbone"] = {"hidden": c.hidden_size, "layers": c.num_hidden_layers,
                                "heads": c.num_attention_heads, "kv_heads": c.num_key_value_heads}
            parts["projector"] = m.projector
        else:
            c2 = m.config
            info["backbone"] = {"hidden": c2.dim, "layers": c2.num_layers, "heads": c2.num_heads}
        info["parameters"] = {k: sum(p.numel() for p in v.parameters()) for k, v in parts.items()}
        if self.engine is not None:
            from . import cuda_ext

            ops = self.engine.ops
            info["engine"] = {"kernels": self.backend + (" (Triton interpreter)" if self.device.type != "cuda" else ""),
                              "ops": ops.summary(), "cuda_extension": cuda_ext.status(),
                              "skipped_providers": dict(ops.skipped),
                              "cuda_graphs": self.engine.use_cuda_graphs and self.device.type == "cuda",
                              "noise": "keyed Philox 4x32-10 per image (image j of a request with seed s uses "
                                       "seed s + j; row r of a generate call: s + r)"}
        info["serving"] = {**self._limits, "engine": "runtime engine" if self.engine is not None
                           else "engine with PyTorch operations (made on first submit)"}
        return info

    # ------------------------------------------------------------------ generation
    def generate(self, prompt: str | list[str] | None = None, *, class_labels: int | list[int] | None = None,
                 height: int | None = None, width: int | None = None, num_sampling_steps: int | None = None,
                 guidance_scale: float | None = None, seed: int | None = None,
                 generator: torch.Generator | None = None, num_images: int = 1,
                 negative_prompt: str | list[str] | None = None, output_type: str = "pil",
                 callback=None, progress: bool = False) -> GenerationOutput:
        """Generate ``num_images`` images per prompt (text-to-image) or per class label (class-conditional).

        ``callback(step, total)`` is called after every AR step; ``progress=True`` shows a tqdm bar.
        On ``backend="reference"`` this is the release's exact loop (the oracle the tests pin); on the engine
        backends it is a thin loop over ``submit``/``step`` of a scheduler private to ``generate``, sized to the
        call so that all its rows form one batch (one request per prompt or label; row r of seed s draws its noise
        from seed s + r).
        """
        if self.family == "t2i":
            if class_labels is not None:
                raise InvalidRequestError("class_labels is for class-conditional models; this model takes prompts.")
            if prompt is None:
                raise InvalidRequestError("this text-to-image model needs a prompt (a string or a list of strings).")
            prompts, negatives = check_prompts(prompt, negative_prompt)
            height = check_size("height", T2I_DEFAULTS["height"] if height is None else height)
            width = check_size("width", T2I_DEFAULTS["width"] if width is None else width)
            check_t2i_size(height, width)
            steps = T2I_DEFAULTS["num_sampling_steps"] if num_sampling_steps is None else num_sampling_steps
            guidance = T2I_DEFAULTS["guidance_scale"] if guidance_scale is None else guidance_scale
        else:
            if prompt is not None or negative_prompt is not None:
                raise InvalidRequestError("this class-conditional model takes class_labels, not prompts.")
            if class_labels is None:
                raise InvalidRequestError("this class-conditional model needs class_labels (ImageNet ids 0..999).")
            labels = check_labels(class_labels, self.model.config.num_classes)
            size = (self.model.config.grid * self.model.decoder_layout.downsample,) * 2  # digits: until the rewrite
            height = check_size("height", size[0] if height is None else height)
            width = check_size("width", size[1] if width is None else width)
            if (height, width) != size:
                raise InvalidRequestError(f"class-conditional models make {size[0]}x{size[1]} images only, "
                                          f"got {height}x{width}.")
            steps = C2I_STEPS if num_sampling_steps is None else num_sampling_steps
            guidance = self.default_c2i_guidance() if guidance_scale is None else guidance_scale
        grid = token_grid(height, width, self.model.decoder_layout.downsample, self.parallel)
        s = check_sampling(steps, guidance, num_images, output_type, seed, generator, callback, self.device)

        timings: dict[str, float] = {}
        with torch.no_grad(), _progress_bar(progress, s) as report:
            t0 = time.perf_counter()
            if self.engine is None:
                noise = generator_noise(s.generator, self.device)
                with self._device_lock:  # not beside a serving worker's pass (or its CUDA-graph capture)
                    if self.family == "t2i":
                        tokens = generate_t2i_tokens(self.model, prompts, negatives, s.num_images, grid, s.num_steps,
                                                     s.guidance, noise, report)
                    else:
                        rows = [c for c in labels for _ in range(s.num_images)]
                        tokens = generate_c2i_tokens(self.model, rows, s.num_steps, s.guidance, noise, report)
            else:
                items = prompts if self.family == "t2i" else labels
                tokens = self._engine_tokens(items, negatives if self.family == "t2i" else None, s, height, width,
                                             report)
            timings["tokens_s"] = time.perf_counter() - t0
            images = None
            if s.output_type != "tokens":
                t1 = time.perf_counter()
                with self._device_lock:
                    images = format_images(self._decode(tokens, grid, s.generator), s.output_type)
                timings["decode_s"] = time.perf_counter() - t1
        return GenerationOutput(images=images, tokens=tokens.to("cpu", torch.int8), height=height, width=width,
                                seed=s.seed, timings=timings)

    def _engine_tokens(self, items: list, negatives: list | None, s: Sampling, height: int, width: int,
                       report) -> torch.Tensor:
        """``generate`` on the engine: one request per prompt or label on the private generate scheduler, stepped
        here until all are done. A failure cancels the call's other requests and raises the original error."""
        n, guided = s.num_images, s.guidance > 1.0
        seeds = row_seeds(s, len(items) * n)
        with self._generate_lock:
            sched = self._private_scheduler(len(items) * n * (2 if guided else 1))
            handles: list[RequestHandle] = []
            try:
                for i, item in enumerate(items):
                    what = {"prompt": item, "negative_prompt": negatives[i]} if self.family == "t2i" \
                        else {"class_label": item}
                    request = ImageRequest(**what, height=height, width=width, num_images=n,
                                           num_sampling_steps=s.num_steps, guidance_scale=s.guidance,
                                           seed=None if s.seed is None else s.seed + i * n, output_type="tokens")
                    handles.append(sched.submit(request, image_seeds=seeds[i * n:(i + 1) * n]))
                handles[0].add_listener(lambda e: report(e["step"], e["total"]) if e["type"] == "progress" else None)
                while not all(h.done for h in handles):
                    sched.step()
            except BaseException:
                for h in handles:
                    h.cancel()
                raise
            for h in handles:
                if h.status == "failed":
                    raise h._error
            return torch.cat([h.result().tokens for h in handles])

    def default_c2i_guidance(self) -> float:
        c = self.model.config
        return C2I_GUIDANCE.get((c.dim, c.num_layers, c.parallel), C2I_GUIDANCE_FALLBACK)

    # ------------------------------------------------------------------ serving: the step-level API
    def _engine_for_serving(self):
        """The runtime's engine, or on ``backend="reference"`` one with the PyTorch operations (made once)."""
        if self._serving_engine is None:
            self._serving_engine = build_engine(self.model, "torch", self.device, ops_chain="torch")
        return self._serving_engine

    def _new_scheduler(self, name: str, **limits) -> Scheduler:
        default = self.default_c2i_guidance() if self.family == "c2i" else T2I_DEFAULTS["guidance_scale"]
        return Scheduler(self._engine_for_serving(), self.model, self._decode_request, default, name=name,
                         device_lock=self._device_lock, **limits)

    def _private_scheduler(self, rows: int) -> Scheduler:
        """``generate``'s own scheduler (no memory budget), its batch sized to the call's rows; the call's requests
        are prefilled in one pass."""
        with self._serving_setup:
            if self._generate_scheduler is None:
                self._generate_scheduler = self._new_scheduler("generate", max_batch=rows, joint_joins=True)
        self._generate_scheduler.max_batch = rows
        return self._generate_scheduler

    @property
    def scheduler(self) -> Scheduler:
        """The scheduler behind ``submit``/``step`` (made on first use, with the runtime's serving limits)."""
        with self._serving_setup:
            if self._scheduler is None:
                self._scheduler = self._new_scheduler("serve", **self._limits)
            return self._scheduler

    def submit(self, request: ImageRequest | None = None, **kwargs) -> RequestHandle:
        """Queue one request (an ``ImageRequest``, or its fields as keyword arguments) and return its handle at
        once. Refused with ``InvalidRequestError`` when it is invalid or can never fit ``max_batch`` or
        ``memory_budget``. Nothing runs until ``step()`` or the worker (``start_worker``). Any thread."""
        if request is not None and kwargs:
            raise InvalidRequestError("submit() takes an ImageRequest or keyword arguments, not both.")
        return self.scheduler.submit(ImageRequest.from_kwargs(kwargs) if request is None else request)

    def step(self) -> bool:
        """One scheduler round: admit and prefill what fits, then advance every active request by one AR step.
        Returns False when there was nothing to do. Concurrent calls (and the worker) run one at a time."""
        return self.scheduler.step()

    def start_worker(self) -> None:
        """Run ``step()`` in a background thread that owns the device while work exists (idempotent)."""
        self.scheduler.worker.start()

    def stop_worker(self, cancel: bool = False, timeout: float | None = None) -> bool:
        """Stop the worker after the queued and running requests finish (``cancel=True``: cancel them first).
        Returns whether it stopped within ``timeout`` seconds."""
        return True if self._scheduler is None else self._scheduler.worker.stop(cancel, timeout)

    def stats(self) -> dict[str, Any]:
        """Queue length, active requests and rows, images completed, images/s over the last minute, last and mean
        round latency, memory reserved and the limits (see ``serving/stats.py``)."""
        return self.scheduler.stats()

    def _decode_request(self, tokens: torch.Tensor, spec: RequestSpec, output_type: str):
        generator = None if spec.seed is None else torch.Generator(device=self.device).manual_seed(spec.seed)
        return format_images(self._decode(tokens, spec.grid, generator), output_type)

    def decode_tokens(self, tokens: torch.Tensor, height: int, width: int, *, seed: int | None = None,
                      generator: torch.Generator | None = None, output_type: str = "pil"):
        """Decode binary tokens ``[N, h·w, C]`` in generation order to images of ``height × width``.
        ``seed``/``generator`` feed the noise of GAN decoders."""
        if output_type not in ("pil", "np", "pt"):
            raise InvalidRequestError(f"output_type={output_type!r}; decode_tokens gives 'pil', 'np' or 'pt'.")
        grid = token_grid(check_size("height", height), check_size("width", width),
                          self.model.decoder_layout.downsample, self.parallel)
        c = self.model.head_config.token_channels
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 3 or tuple(tokens.shape[1:]) != (grid[0] * grid[1], c):
            shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise InvalidRequestError(f"tokens must be a tensor [N, {grid[0] * grid[1]}, {c}] for a {height}x{width} "
                                      f"image, got {shape}.")
        if seed is not None and generator is not None:
            raise InvalidRequestError("pass either seed or generator, not both.")
        if generator is None and seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
        with torch.no_grad(), self._device_lock:
            return format_images(self._decode(tokens, grid, generator), output_type)

    def _decode(self, tokens: torch.Tensor, grid: tuple[int, int], generator: torch.Generator | None) -> torch.Tensor:
        side = int(round(self.parallel ** 0.5))
        z = from_patch_raster(tokens.to(self.device, self.dtype), grid[0], grid[1], side)
        return self.model.decoder(z, generator)


class _progress_bar:
    """Context manager giving a ``report(step, total)`` that drives tqdm and the user's callback."""

    def __init__(self, show: bool, sampling: Sampling):
        self.show, self.callback, self.bar = show, sampling.callback, None

    def __enter__(self):
        def report(step: int, total: int) -> None:
            if self.show:
                if self.bar is None:
                    from tqdm import tqdm

                    self.bar = tqdm(total=total, desc="AR steps", unit="step")
                self.bar.update(1)
            if self.callback is not None:
                self.callback(step, total)
        return report

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
        return False
