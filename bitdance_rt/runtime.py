"""``Runtime``: load a released BitDance checkpoint and generate images from it.

The family is told from the files: a directory holding ``config.json`` is a text-to-image model; a file is a
class-conditional ``torch.save`` checkpoint. Generation validates every argument before it starts and keeps all
per-call state (caches, generator) local, so a failed call leaves the runtime as it was.
"""

from __future__ import annotations

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
from .requests import Sampling, check_labels, check_prompts, check_sampling, check_size, row_generators
from .sizes import C2I_SIZE, check_t2i_size, token_grid

T2I_DEFAULTS = {"height": 1024, "width": 1024, "num_sampling_steps": 50, "guidance_scale": 7.5}
C2I_STEPS = 100
# the release's sampling flags, by (width, layers, P); other shapes fall back to C2I_GUIDANCE_FALLBACK
C2I_GUIDANCE = {(768, 24, 1): 3.2, (768, 24, 4): 3.9, (768, 24, 16): 6.1, (1024, 32, 1): 4.0, (1280, 40, 1): 4.55}
C2I_GUIDANCE_FALLBACK = 4.0


class Runtime:
    """A loaded model. Build it with :meth:`from_pretrained`."""

    def __init__(self, model: T2IModel | C2IModel, device: torch.device, dtype: torch.dtype, backend: str):
        self.model = model
        self.device = device
        self.dtype = dtype
        self.backend = backend
        self.family = "t2i" if isinstance(model, T2IModel) else "c2i"
        self.engine = build_engine(model) if backend == "triton" else None

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device | None = None,
                        dtype: torch.dtype | str | None = None, backend: str = "auto",
                        tokenizer_path: str | Path | None = None, trust_pickle: bool = False) -> "Runtime":
        """Load a model. ``path``: a text-to-image directory or a class-conditional checkpoint file;
        ``tokenizer_path``: the class-conditional tokenizer file (``ae_d16c32.pt``); ``backend``: ``"auto"``
        (Triton engine on CUDA, reference elsewhere), ``"reference"`` or ``"triton"`` (see ``backends.py``)."""
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
        return cls(model, dev, dt, backend)

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
            info["engine"] = {"kernels": "triton" + (" (interpreter)" if self.device.type != "cuda" else ""),
                              "cuda_graphs": self.engine.use_cuda_graphs and self.device.type == "cuda",
                              "noise": "per request (row r of seed s uses seed s + r)"}
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
            labels = check_labels(class_labels)
            height = check_size("height", C2I_SIZE[0] if height is None else height)
            width = check_size("width", C2I_SIZE[1] if width is None else width)
            if (height, width) != C2I_SIZE:
                raise InvalidRequestError(f"class-conditional models make {C2I_SIZE[0]}x{C2I_SIZE[1]} images only, "
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
                if self.family == "t2i":
                    tokens = generate_t2i_tokens(self.model, prompts, negatives, s.num_images, grid, s.num_steps,
                                                 s.guidance, noise, report)
                else:
                    rows = [c for c in labels for _ in range(s.num_images)]
                    tokens = generate_c2i_tokens(self.model, rows, s.num_steps, s.guidance, noise, report)
            else:
                count = (len(prompts) if self.family == "t2i" else len(labels)) * s.num_images
                gens = row_generators(s, count, self.device)
                if self.family == "t2i":
                    tokens = self.engine.generate_tokens(prompts, negatives, s.num_images, grid, s.num_steps,
                                                         s.guidance, gens, report)
                else:
                    rows = [c for c in labels for _ in range(s.num_images)]
                    tokens = self.engine.generate_tokens(rows, s.num_steps, s.guidance, gens, report)
            timings["tokens_s"] = time.perf_counter() - t0
            images = None
            if s.output_type != "tokens":
                t1 = time.perf_counter()
                images = format_images(self._decode(tokens, grid, s.generator), s.output_type)
                timings["decode_s"] = time.perf_counter() - t1
        return GenerationOutput(images=images, tokens=tokens.to("cpu", torch.int8), height=height, width=width,
                                seed=s.seed, timings=timings)

    def default_c2i_guidance(self) -> float:
        c = self.model.config
        return C2I_GUIDANCE.get((c.dim, c.num_layers, c.parallel), C2I_GUIDANCE_FALLBACK)

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
        with torch.no_grad():
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
