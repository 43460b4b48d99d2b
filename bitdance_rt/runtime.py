"""``Runtime``: a loaded model (its family object), its backend, and the step-level API over it.

``Runtime = family + runner + scheduler``. ``from_pretrained`` checks every argument (``platform``), tells the
family from the files and loads the model (``families``); requests are checked by the one validator
(``request.py``). ``generate`` runs the release's loop on the reference backend (the oracle); on the engine backends
it is ``submit`` ×N plus a step loop on a scheduler of its own, the tokens staying on the device until the end.
``submit`` queues one request and returns a handle, ``step`` advances every active request by one AR step
(continuous batching, ``batching/``), ``start_worker`` runs the steps in a background thread, ``stats`` reports the
queue and rates. The device work goes through the model runner (``engine/runner.py``): the runtime's engine on the
``"triton"`` and ``"cuda"`` backends; on ``"reference"`` an engine with the PyTorch operations (any device, no
Triton, no CUDA graphs), made on first use. A failed call leaves the runtime as it was.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import torch

from .engine import build_engine
from .errors import InvalidRequestError
from .ops.gemm_choice import MODES as GEMM_MODES
from .families import Family, family_of, load_family
from .outputs import GenerationOutput, format_images
from .quantization.formats import check_quantization
from .platform import engine_chain, resolve_backend, resolve_device, resolve_dtype
from .request import GenerateCall, ImageRequest, RequestSpec, check_int, image_seeds, resolve_generate
from .batching.handle import RequestHandle
from .batching.limits import DEFAULT_MAX_BATCH, check_max_batch, parse_memory_budget
from .batching.scheduler import Scheduler
from .engine.runner import ModelRunner
from .sizes import token_grid

__all__ = ["Runtime"]


class Runtime:
    """A loaded model. Build it with :meth:`from_pretrained`."""

    def __init__(self, model, device: torch.device, dtype: torch.dtype, backend: str, *,
                 max_batch: int = DEFAULT_MAX_BATCH, memory_budget: int | str | None = None,
                 batch_invariant: bool = True, op_providers: dict[str, str] | None = None,
                 float_gemm: str = "measured"):
        self.family: Family = family_of(model)
        self.model = self.family.model
        self.device = device
        self.dtype = dtype
        self.backend = backend
        self._limits = {"max_batch": check_max_batch(max_batch), "memory_budget": parse_memory_budget(memory_budget),
                        "batch_invariant": bool(batch_invariant)}
        self._op_providers = dict(op_providers or {})
        self._float_gemm = float_gemm
        self.engine = self._build_engine() if backend in ("triton", "cuda") else None
        self._runner: ModelRunner | None = None
        self._device_lock = threading.RLock()  # every device pass of the schedulers and previews
        self._serving_setup = threading.RLock()
        self._generate_lock = threading.Lock()
        self._scheduler: Scheduler | None = None
        self._generate_scheduler: Scheduler | None = None

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device | None = None,
                        dtype: torch.dtype | str | None = None, backend: str = "auto",
                        tokenizer_path: str | Path | None = None, trust_pickle: bool = False,
                        max_batch: int = DEFAULT_MAX_BATCH, memory_budget: int | str | None = None,
                        batch_invariant: bool = True, op_providers: dict[str, str] | None = None,
                        quantization: str | None = None, float_gemm: str = "measured") -> "Runtime":
        """Load a model. ``path``: a text-to-image directory or a class-conditional checkpoint file;
        ``tokenizer_path``: the class-conditional tokenizer file (``ae_d16c32.pt``); ``backend``: ``"auto"``
        (the engine on CUDA, the reference elsewhere), ``"reference"``, ``"triton"`` or ``"cuda"`` (see
        ``platform.py``); ``op_providers``: ``{operation: provider}`` overriding the engine's choice of provider
        for single operations (``"cuda"``, ``"triton"`` or ``"torch"``; see ``bitdance_rt.ops``). Serving limits
        (``submit``/``step``): ``max_batch`` rows per continuous batch (an image is 2 rows when guided),
        ``memory_budget`` in bytes or as ``"20GiB"`` (None: no limit), ``batch_invariant`` (every step computes the
        whole batch, so an image does not depend on what shares it). ``quantization``: None (the checkpoint's
        precision), ``"fp8"`` (e4m3 weights with a scale per output channel, activations quantized per token on the
        fly; CUDA compute capability >= 8.9) or ``"int8"`` (int8 weights with a scale per output channel, weight-only;
        any GPU): every linear of the backbone and the diffusion head is quantized at load, one tensor at a time
        from the released files (``loading/quantized_load.py``); on the CPU both run through the plain-PyTorch
        reference math. ``float_gemm``: the engine's float-weight GEMMs: ``"measured"`` (cuBLAS unless the
        benchmark's per-shape table, ``ops/gemm_choice.py``, says our Triton GEMM with its fused SwiGLU / gated
        residual epilogue wins), ``"ours"`` (always the Triton GEMM) or ``"cublas"``. Every argument is checked
        before any weight is read."""
        check_max_batch(max_batch)
        parse_memory_budget(memory_budget)
        dev = resolve_device(device)
        quantization = check_quantization(quantization, dev)
        dt = resolve_dtype(dtype, dev)
        backend = resolve_backend(backend, dev)
        _check_op_providers(op_providers, dev, backend)
        if float_gemm not in GEMM_MODES:
            raise InvalidRequestError(f"float_gemm must be one of {GEMM_MODES}, got {float_gemm!r}.",
                                      param="float_gemm")
        with torch.inference_mode(False), torch.no_grad():
            family = load_family(Path(path), tokenizer_path, dev, dt, trust_pickle=trust_pickle,
                                 quantization=quantization)
        return cls(family, dev, dt, backend, max_batch=max_batch, memory_budget=memory_budget,
                   batch_invariant=batch_invariant, op_providers=op_providers, float_gemm=float_gemm)

    def _build_engine(self, chain: str | None = None):
        """The engine over the model's weights, its operations resolved for this backend (or ``chain``)."""
        from .ops import OpSet

        ops = OpSet(self.device, chain or engine_chain(self.backend), overrides=self._op_providers,
                    float_gemm=self._float_gemm)
        return build_engine(self.family, ops)

    # ------------------------------------------------------------------ information
    @property
    def parallel(self) -> int:
        return self.family.parallel

    def describe(self) -> dict[str, Any]:
        """Family, backend, device, dtype, P, sizes, defaults and parameter counts of the loaded model; the engine's
        operations; the serving limits."""
        info: dict[str, Any] = {"backend": self.backend, "device": str(self.device),
                                "dtype": str(self.dtype).replace("torch.", ""),
                                "quantization": self.family.quantization, **self.family.describe()}
        info["memory"] = self.memory_estimate()
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

    def memory_estimate(self, num_images: int = 1, height: int | None = None, width: int | None = None,
                        guidance_scale: float | None = None) -> dict[str, Any]:
        """Device memory, estimated from the shapes (``engine/memory.py``): ``weights_bytes`` (the weights as held
        on the device, 8-bit codes and scales included) and ``peak_bytes`` for one request of ``num_images`` images
        of ``height × width`` (default: the model's size and guidance) served alone: weights, its batch (KV cache,
        buffers, one AR step's activations) and its join (prefill or decoding its images)."""
        from .engine.memory import peak_bytes
        from .request import resolve_request

        condition = {"prompt": "a photo"} if self.family.condition_field == "prompt" else {"class_label": 0}
        spec = resolve_request(ImageRequest(**condition, num_images=num_images, height=height, width=width,
                                            guidance_scale=guidance_scale), self.family)
        placement = self.family.placement(spec)
        runner = self.runner
        batch = runner.batch_bytes(spec, spec.num_images, placement.max_len)
        join = runner.join_bytes(spec, spec.num_images, placement.max_len)
        return {"quantization": self.family.quantization, "weights_bytes": runner.dims.weights_bytes,
                "num_images": spec.num_images, "height": spec.height, "width": spec.width,
                "batch_bytes": batch, "join_bytes": join, "peak_bytes": peak_bytes(runner.dims, batch, join)}

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
        call = resolve_generate(self.family, prompt, class_labels, negative_prompt, height=height, width=width,
                                num_sampling_steps=num_sampling_steps, guidance_scale=guidance_scale, seed=seed,
                                generator=generator, num_images=num_images, output_type=output_type,
                                callback=callback, device=self.device)
        first = call.first
        timings: dict[str, float] = {}
        with torch.no_grad(), _progress_bar(progress, call.callback) as report:
            t0 = time.perf_counter()
            if self.engine is None:
                with self._device_lock:  # not beside a serving worker's pass (or its CUDA-graph capture)
                    tokens = self.family.reference_tokens(call.specs, call.generator, report)
            else:
                tokens = self._engine_tokens(call, report)
            timings["tokens_s"] = time.perf_counter() - t0
            images = None
            if first.output_type != "tokens":
                t1 = time.perf_counter()
                with self._device_lock:
                    images = format_images(self._decode(tokens, first.grid, call.generator), first.output_type)
                timings["decode_s"] = time.perf_counter() - t1
        return GenerationOutput(images=images, tokens=tokens.to("cpu", torch.int8), height=first.height,
                                width=first.width, seed=call.seed, timings=timings)

    def _engine_tokens(self, call: GenerateCall, report) -> torch.Tensor:
        """``generate`` on the engine: one request per prompt or label on the private generate scheduler, stepped
        here until all are done. A failure cancels the call's other requests and raises the original error."""
        seeds = image_seeds(call)
        with self._generate_lock:
            sched = self._private_scheduler(sum(s.rows for s in call.specs))
            handles: list[RequestHandle] = []
            try:
                for spec, own in zip(call.specs, seeds):
                    handles.append(sched.submit_spec(_tokens_only(spec, own)))
                handles[0].add_listener(lambda e: report(e["step"], e["total"]) if e["type"] == "progress" else None)
                while not all(h.done for h in handles):
                    sched.step()
            except BaseException:
                for h in handles:
                    h.cancel()
                raise
            for h in handles:
                h.raise_if_failed()
            return torch.cat([h.result().tokens for h in handles])

    # ------------------------------------------------------------------ serving: the step-level API
    @property
    def runner(self) -> ModelRunner:
        """The model runner behind ``submit``/``step`` (and ``generate`` on the engine backends): the runtime's
        engine, or on ``backend="reference"`` one with the PyTorch operations (made on first use)."""
        with self._serving_setup:
            if self._runner is None:
                engine = self.engine if self.engine is not None else self._build_engine("torch")
                self._runner = ModelRunner(self.family, engine)
            return self._runner

    def _new_scheduler(self, name: str, **limits) -> Scheduler:
        return Scheduler(self.runner, name=name, device_lock=self._device_lock, **limits)

    def _private_scheduler(self, rows: int) -> Scheduler:
        """``generate``'s own scheduler (no memory budget), its batch sized to the call's rows; the call's requests
        are prefilled in one pass."""
        with self._serving_setup:
            if self._generate_scheduler is None:
                self._generate_scheduler = self._new_scheduler("generate", max_batch=rows)
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

    def decode_tokens(self, tokens: torch.Tensor, height: int, width: int, *, seed: int | None = None,
                      generator: torch.Generator | None = None, output_type: str = "pil"):
        """Decode binary tokens ``[N, h·w, C]`` in generation order to images of ``height × width``.
        ``seed``/``generator`` feed the noise of GAN decoders."""
        if output_type not in ("pil", "np", "pt"):
            raise InvalidRequestError(f"output_type={output_type!r}; decode_tokens gives 'pil', 'np' or 'pt'.")
        grid = token_grid(check_int("height", height, 1), check_int("width", width, 1), self.family.downsample,
                          self.parallel)
        c = self.family.token_channels
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
        """Tokens to the decoder's float images: with the engine's decoder on the engine backends (the kernels'
        ``EngineTokenDecoder``, in chunks), the reference module on the reference backend."""
        decoder = None if self.engine is None else self.engine.token_decoder
        return self.family.decode(tokens, grid, generator, decoder)


def _tokens_only(spec: RequestSpec, seeds: list[int]) -> RequestSpec:
    """A ``generate`` call's request as the private scheduler runs it: tokens only, with the call's image seeds."""
    from dataclasses import replace

    return replace(spec, output_type="tokens", image_seeds=tuple(seeds))


def _check_op_providers(op_providers, device: torch.device, backend: str) -> None:
    if op_providers is None:
        return
    from .ops import OP_NAMES, PROVIDERS

    if not isinstance(op_providers, dict):
        raise InvalidRequestError(f"op_providers must be a dict {{operation: provider}}, got "
                                  f"{type(op_providers).__name__}.", param="op_providers")
    for name, provider in op_providers.items():
        if name not in OP_NAMES:
            raise InvalidRequestError(f"op_providers: {name!r} is not an engine operation; operations: "
                                      f"{', '.join(OP_NAMES)}.", param="op_providers")
        if provider not in PROVIDERS:
            raise InvalidRequestError(f"op_providers[{name!r}] = {provider!r}; providers: {', '.join(PROVIDERS)}.",
                                      param="op_providers")


class _progress_bar:
    """Context manager giving a ``report(step, total)`` that drives tqdm and the user's callback."""

    def __init__(self, show: bool, callback):
        self.show, self.callback, self.bar = show, callback, None

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
