"""A ``Runtime`` without a model, for the HTTP server's tests: the real ``Runtime`` serving surface, ``Scheduler``,
``Worker`` and ``RequestHandle`` (``bitdance_rt/batching``) over ``FakeRunner``, a stand-in for the model runner
(``engine/runner.py``) that does no model work, milliseconds per request.

``FakeRuntime(family="t2i", parallel=64, downsample=16, step_time=0.005)``: a text-to-image (or ``"c2i"``) model
whose requests take ``h·w / (downsample² · P)`` AR steps (16 for 512x512 at P = 64); every batch pass of the runner
sleeps ``step_time`` seconds. Images are ``[H, W, 3]`` uint8 noise drawn from the request's seed (one NumPy
generator per request, all its images); a preview is the image with the rows not generated yet left black. A prompt
containing ``FAIL_MARKER`` runs in a batch of its own whose pass raises ``RuntimeError("injected failure")`` at AR
step ``FAIL_STEP`` (after 2 steps), so the scheduler fails that batch's requests and no other. ``max_images`` is
the memory budget (an image counts ``IMAGE_BYTES``): the scheduler refuses a request for more images with
``InvalidRequestError`` at submit. ``hold()`` / ``release()`` take and give back the scheduler's step lock, which
pauses the worker between rounds (queued requests stay queued; cancels and previews go on). ``submitted`` and
``requests`` list the handles and the ``ImageRequest`` objects the server submitted.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from PIL import Image

from bitdance_rt.batching import RequestHandle
from bitdance_rt.families import ClassConditional, TextToImage
from bitdance_rt.reference.c2i_backbone import C2IConfig
from bitdance_rt.request import ImageRequest
from bitdance_rt.runtime import Runtime
from bitdance_rt.sizes import C2I_SIZE

FAIL_MARKER = "[fail]"
FAIL_STEP = 2          # the AR step (0-based) whose pass raises for a prompt with FAIL_MARKER
IMAGE_BYTES = 2 ** 20  # what one image counts against the memory budget


class _WordTokenizer:
    """One token per word; the image-start tokens are one per grid row (what ``TextToImage.cache_rows`` asks)."""

    @staticmethod
    def encode(text: str) -> list[int]:
        return [len(w) for w in text.split()]

    @staticmethod
    def image_start_ids(grid_h: int, grid_w: int, parallel: int) -> list[int]:
        return [0] * grid_h


def _fake_family(family: str, parallel: int, downsample: int):
    """The runtime's family object over a stand-in model holding only the facts the families read."""
    layout = SimpleNamespace(downsample=downsample)
    if family == "t2i":
        return TextToImage(SimpleNamespace(parallel=parallel, decoder_layout=layout, tokenizer=_WordTokenizer()))
    config = C2IConfig(dim=0, num_layers=0, num_heads=1, token_channels=1, parallel=parallel,
                       grid=C2I_SIZE[0] // downsample)
    return ClassConditional(SimpleNamespace(parallel=parallel, decoder_layout=layout, config=config))


def _fails(spec) -> bool:
    return FAIL_MARKER in (spec.prompt or "")


@dataclass
class _Request:
    """A joined request as the fake runner keeps it: its batch, first slot, spec and AR steps made."""
    key: tuple
    first_slot: int
    spec: Any
    steps: int


class FakeRunner:
    """The runner seam the scheduler drives (``ModelRunner``'s methods), without a model: a batch is a map of its
    occupied slots to request ids, a request's tokens are 1 where made and 0 where not (int8 ``[images, h·w, 1]``),
    and decoding them is the seed's noise with the rows of tokens not made yet black. It checks what the scheduler
    asks (slots free on a join, every stepped request in its batch)."""

    def __init__(self, family, step_time: float):
        self.family, self.step_time = family, step_time
        self._batches: dict[tuple, dict[int, str]] = {}  # batch key -> {slot: request id}
        self._requests: dict[str, _Request] = {}

    # ---------------------------------------------------------------- what the scheduler asks
    def placement(self, spec):
        """The family's placement; a failing request gets a group (a batch) of its own."""
        placement = self.family.placement(spec)
        return replace(placement, key=placement.key + ("fails",)) if _fails(spec) else placement

    def leading_unguided_steps(self, spec) -> int:
        return self.family.leading_unguided_steps(spec.guidance, spec.num_ar)

    def batch_bytes(self, spec, slots: int, max_len: int) -> int:
        return 0

    def join_bytes(self, spec, slots: int, max_len: int) -> int:
        return spec.num_images * IMAGE_BYTES

    # ---------------------------------------------------------------- batches
    def close(self, key: tuple) -> None:
        self._batches.pop(key, None)

    def join(self, key: tuple, slots: int, max_len: int, joins: list) -> list[int]:
        """Take the joining requests' slots and make their leading unguided AR steps (no time spent)."""
        batch = self._batches.setdefault(key, {})
        for j in joins:
            taken = [s for s in range(j.first_slot, j.first_slot + j.spec.num_images) if s in batch or s >= slots]
            if taken:
                raise ValueError(f"FakeRunner.join: slots {taken} of batch {key} are taken or out of range")
        leading = self.leading_unguided_steps(joins[0].spec)
        for j in joins:
            self._requests[j.request_id] = _Request(key, j.first_slot, j.spec, leading)
            if leading < j.spec.num_ar:
                batch.update((s, j.request_id) for s in range(j.first_slot, j.first_slot + j.spec.num_images))
        return list(range(1, leading + 1))

    def step(self, key: tuple, slots: int, active: list) -> None:
        """One pass over batch ``key``: ``step_time`` seconds, then one AR step more for every active request;
        those that made their last step leave the batch. Raises at ``FAIL_STEP`` for a failing request."""
        batch = self._batches[key]
        time.sleep(self.step_time)
        for a in active:
            if batch.get(a.first_slot) != a.request_id:
                raise ValueError(f"FakeRunner.step: request {a.request_id} is not at slot {a.first_slot} of {key}")
            if _fails(a.spec) and a.ar_step == FAIL_STEP:
                raise RuntimeError("injected failure")
        for a in active:
            self._requests[a.request_id].steps = a.ar_step + 1
            if a.ar_step + 1 == a.spec.num_ar:
                self.leave(key, a.first_slot, a.images)

    def leave(self, key: tuple, first_slot: int, count: int) -> None:
        batch = self._batches.get(key, {})
        for s in range(first_slot, first_slot + count):
            batch.pop(s, None)

    # ---------------------------------------------------------------- results
    def tokens(self, request_id: str) -> torch.Tensor | None:
        r = self._requests.get(request_id)
        if r is None:
            return None
        tokens = torch.zeros(r.spec.num_images, r.spec.num_ar * r.spec.parallel, 1, dtype=torch.int8)
        tokens[:, :r.steps * r.spec.parallel] = 1
        return tokens

    def decode(self, tokens: torch.Tensor, spec, output_type: str):
        """The request's noise images, each black below the share of its tokens made."""
        pixels = np.random.default_rng(spec.seed).integers(0, 256, size=(spec.num_images, spec.height, spec.width, 3),
                                                           dtype=np.uint8)
        made = (tokens != 0).flatten(1).sum(1).tolist()
        for image, n in zip(pixels, made):
            image[spec.height * n // tokens[0].numel():] = 0
        if output_type == "np":
            return pixels
        if output_type == "pt":
            return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return [Image.fromarray(p) for p in pixels]

    def outputs(self, finished: list[tuple[str, Any]], together: bool = True) -> list[tuple[Any, torch.Tensor]]:
        """Each finished request's images (None for ``"tokens"``) and tokens; their state is dropped."""
        results = []
        for rid, spec in finished:
            tokens = self.tokens(rid)
            results.append((None if spec.output_type == "tokens" else self.decode(tokens, spec, spec.output_type),
                            tokens))
        for rid, _ in finished:
            self.forget(rid)
        return results

    def output(self, request_id: str, spec) -> tuple[Any, torch.Tensor]:
        return self.outputs([(request_id, spec)])[0]

    def preview(self, request_id: str, spec, output_type: str):
        tokens = self.tokens(request_id)
        if tokens is None:
            tokens = torch.zeros(spec.num_images, spec.num_ar * spec.parallel, 1, dtype=torch.int8)
        return self.decode(tokens, spec, output_type)

    def forget(self, request_id: str) -> None:
        self._requests.pop(request_id, None)


class FakeRuntime(Runtime):
    """A real ``Runtime`` (its ``submit``, ``start_worker``, ``stats``, scheduler and handles) over ``FakeRunner``;
    see the module docstring. ``family``, ``parallel``, ``model.decoder_layout.downsample`` and ``describe()`` are
    what the server reads; ``generate``, ``decode_tokens`` and ``memory_estimate`` need a model and are not faked."""

    def __init__(self, family: str = "t2i", parallel: int = 64, downsample: int = 16, step_time: float = 0.005,
                 max_images: int = 8, max_batch: int = 64):
        super().__init__(_fake_family(family, parallel, downsample), torch.device("cpu"), torch.float32, "reference",
                         max_batch=max_batch, memory_budget=max_images * IMAGE_BYTES)
        self.step_time = step_time
        self.max_images = max_images
        self._runner = FakeRunner(self.family, step_time)
        self._hold_guard = threading.Lock()
        self._held = False
        self.submitted: list[RequestHandle] = []
        self.requests: list[ImageRequest] = []

    def describe(self) -> dict[str, Any]:
        return {"family": self.family.key, "backend": "fake", "device": "cpu", "dtype": "float32",
                "tokens_per_step": self.parallel, "serving": dict(self._limits)}

    def submit(self, request: ImageRequest | None = None, **kwargs) -> RequestHandle:
        handle = super().submit(request, **kwargs)
        self.submitted.append(handle)
        self.requests.append(request if request is not None else ImageRequest.from_kwargs(kwargs))
        return handle

    def stop_worker(self, cancel: bool = False, timeout: float | None = None) -> bool:
        self.release()  # a held worker could never finish
        return super().stop_worker(cancel, timeout)

    def hold(self) -> None:
        """Pause the worker after its current round (its next ``Scheduler.step`` waits for the step lock, a plain
        ``Lock``, which ``release()`` may give back from any thread); idempotent."""
        with self._hold_guard:
            if not self._held:
                self.scheduler._step_lock.acquire()
                self._held = True

    def release(self) -> None:
        with self._hold_guard:
            if self._held:
                self._held = False
                self.scheduler._step_lock.release()
