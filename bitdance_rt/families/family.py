"""``Family``: everything that differs between the text-to-image and the class-conditional models, answered by one
object bound to the loaded model, so no other layer asks which family it has.

A family says what a request must carry (``condition_field``: a prompt or a class label) and checks it, which sizes
the model makes and its defaults (size, sampling steps, guidance), the guidance schedule over the AR steps and the
AR steps run unguided before a request joins a batch, the cache rows of a request (token ids or class ids) and the
cache length its batch needs, the reference generation loop (the oracle), the engine over the model's weights, and
the model's description. ``bitdance_rt.families.load_family`` tells the family from the files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..errors import InvalidRequestError
from ..sizes import format_sizes, token_grid

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class Placement:
    """How a request is batched: its cache rows (token ids or class ids, slot order), the key of the group it
    batches with and that group's cache length."""
    rows: list
    key: tuple
    max_len: int


class Family:
    key: str                 # "t2i" | "c2i": the family's name on the wire (HTTP, JSON)
    title: str               # "text-to-image" | "class-conditional"
    condition_field: str     # the request field that says what to draw: "prompt" | "class_label"

    def __init__(self, model):
        self.model = model
        self._layout = None
        self._positions: dict[tuple, torch.Tensor] = {}

    # ------------------------------------------------------------------ model facts
    @property
    def quantization(self) -> str | None:
        """``"fp8"`` or ``"int8"`` when the backbone's and head's linears were loaded as 8-bit weights, else None."""
        from ..quantization.modules import QuantizedLinear

        for part in (self.model.backbone, self.model.head):
            for m in part.modules():
                if isinstance(m, QuantizedLinear):
                    return m.fmt
        return None

    def weights_bytes(self) -> int:
        """Bytes of every part's parameters and buffers as held on the device (8-bit codes and scales included)."""
        from ..quantization.modules import weights_bytes

        return sum(weights_bytes(m) for m in self.modules().values())

    @property
    def parallel(self) -> int:
        """P: tokens per AR step."""
        return self.model.parallel

    @property
    def token_channels(self) -> int:
        return self.model.head_config.token_channels

    @property
    def downsample(self) -> int:
        return self.model.decoder_layout.downsample

    @property
    def sizes(self) -> tuple[tuple[int, int], ...]:
        """``(height, width)`` in pixels of every image the model makes."""
        raise NotImplementedError

    @property
    def default_size(self) -> tuple[int, int]:
        raise NotImplementedError

    @property
    def default_steps(self) -> int:
        raise NotImplementedError

    @property
    def default_guidance(self) -> float:
        raise NotImplementedError

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """The token grid of an image size the model makes (checked: a size outside ``sizes`` is refused)."""
        if (height, width) not in self.sizes:
            raise InvalidRequestError(f"height x width = {height}x{width} is not a supported size; choose one of: "
                                      f"{format_sizes(self.sizes)} (height x width, pixels).", param="size")
        return token_grid(height, width, self.downsample, self.parallel)

    # ------------------------------------------------------------------ requests
    def check_condition(self, prompt, negative_prompt, class_label) -> tuple[str | None, str | None, int | None]:
        """A request's condition, checked: ``(prompt, negative_prompt, class_label)`` with the fields this family
        does not take left ``None``; raises ``InvalidRequestError`` naming the field."""
        raise NotImplementedError

    def guidance_at(self, guidance: float, ar_step: int, num_ar: int) -> float:
        """The guidance scale of AR step ``ar_step`` of ``num_ar`` for a request asking ``guidance``."""
        raise NotImplementedError

    def leading_unguided_steps(self, guidance: float, num_ar: int) -> int:
        """AR steps a guided request runs on its own rows, unguided over both rows of each image, before it steps
        with its batch (the class-conditional release's step 0); 0 when there are none."""
        return 0

    def placement(self, spec) -> Placement:
        """The cache rows of a resolved request (``request.RequestSpec``) and the group it batches with."""
        raise NotImplementedError

    # ------------------------------------------------------------------ running
    def reference_tokens(self, specs: list, generator: torch.Generator, progress: ProgressFn | None
                         ) -> torch.Tensor:
        """The release's generation loop on the reference modules for the requests ``specs`` (one generate call:
        same size, steps and guidance), drawing noise from ``generator`` in the release's order. Returns the
        conditional rows' tokens ``[images, h·w, C]`` in request order."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the engine's questions
    def backbone_layout(self):
        """The layer facts and tensors the engine's backbone loop reads (``backbone_layout.BackboneLayout``),
        built once."""
        if self._layout is None:
            self._layout = self._build_layout()
        return self._layout

    def _build_layout(self):
        raise NotImplementedError

    def prefill_inputs(self, rows: list, device: torch.device, pad_rows: int | None = None,
                       pad_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A prefill's inputs for cache rows ``rows`` (``cache_rows``): the input embeddings ``[B, T, W]``
        (rows padded to the longest, or to ``pad_len``; ``pad_rows``: B, filler rows of one block appended), each
        row's length and the causal part of it (int32 ``[B]``; the rest is the first block of P, attending
        bidirectionally). Built with one host-to-device copy per tensor, whatever the row count."""
        raise NotImplementedError

    def prefill_length(self, max_len: int, num_ar: int) -> int:
        """The prefill length every join of a group computes (its rows padded to it), from the group's cache
        length: fixed per group, so a row's prefill never depends on what joins with it."""
        return max_len - (num_ar - 1) * self.parallel

    def block_positions(self, grid: tuple[int, int], device: torch.device) -> torch.Tensor:
        """The position term the head adds to the hidden states of every AR step, ``[h·w / P, P, W]`` float32
        (cached per grid)."""
        key = (grid, str(device))
        if key not in self._positions:
            self._positions[key] = self._position_table(grid).to(device)
        return self._positions[key]

    def _position_table(self, grid: tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError

    def embed_feedback(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """The next block's input embeddings ``[B, P, W]`` (backbone dtype) from sampled tokens ``[B, P, C]`` and
        each row's position term ``pos`` of the block just sampled."""
        raise NotImplementedError

    @property
    def token_embedder(self) -> torch.nn.Module:
        """The module that turns fed-back binary tokens into backbone inputs."""
        raise NotImplementedError

    def prefix_lengths(self, spec) -> list[int]:
        """Positions each cache row of a resolved request runs through its prefill, in slot order."""
        raise NotImplementedError

    def modules(self) -> dict[str, torch.nn.Module]:
        """The model's parts by name, for parameter counts."""
        raise NotImplementedError

    def decode(self, tokens: torch.Tensor, grid: tuple[int, int], generator: torch.Generator | None,
               decoder: Callable | None = None) -> torch.Tensor:
        """Binary tokens ``[N, h·w, C]`` in generation order -> the decoder's float images ``[N, 3, H, W]``
        (``generator`` feeds the noise of GAN decoders). ``decoder``: what runs the token map, called as
        ``decoder(z, generator)`` like the model's ``TokenDecoder`` (the default, the reference), e.g. the engine's
        ``EngineTokenDecoder`` over the same weights."""
        from ..reference.patch_order import from_patch_raster

        weight = next(self.model.decoder.parameters())
        side = int(round(self.parallel ** 0.5))
        z = from_patch_raster(tokens.to(weight.device, weight.dtype), grid[0], grid[1], side)
        return (self.model.decoder if decoder is None else decoder)(z, generator)

    def describe(self) -> dict[str, Any]:
        """Family, P, sizes and widths of the loaded model (``Runtime.describe``)."""
        m = self.model
        return {"family": self.key, "tokens_per_step": self.parallel, "token_channels": self.token_channels,
                "sizes": [f"{h}x{w}" for h, w in self.sizes], "default_size": list(self.default_size),
                "defaults": {"num_sampling_steps": self.default_steps, "guidance_scale": self.default_guidance},
                "head": {"width": m.head_config.width, "blocks": m.head_config.depth,
                         "kind": m.head_config.block_kind},
                "decoder_downsample": self.downsample,
                "parameters": {k: sum(p.numel() for p in v.parameters()) for k, v in self.modules().items()}}
