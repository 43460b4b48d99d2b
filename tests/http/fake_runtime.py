"""A stand-in for ``Runtime`` with its serving interface (``submit``, ``start_worker``, ``stop_worker``, ``stats``
and request handles, as in ``bitdance_rt/batching/handle.py``), for the HTTP server's tests: no model, no torch
work, milliseconds per request; failures and a paused worker on demand.

``FakeRuntime(family="t2i", parallel=64, downsample=16, step_time=0.005)``: a text-to-image (or ``"c2i"``) model
whose requests take ``h·w / (downsample² · P)`` AR steps (16 for 512x512 at P = 64), each ``step_time`` seconds in
one background worker that steps every active request together. Images are ``[H, W, 3]`` uint8 noise drawn from
the request's seed (a fresh NumPy generator per request); a preview is the image with the rows not generated yet
left black. A prompt containing ``FAIL_MARKER`` fails at step 2 with a ``RuntimeError``; ``max_images`` is the
"memory budget": a request for more images raises ``InvalidRequestError`` at submit. ``hold()`` / ``release()``
pause the worker so that tests can look at queued requests.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any, Callable

import numpy as np
from PIL import Image

from bitdance_rt.errors import BitDanceError, InvalidRequestError
from bitdance_rt.outputs import GenerationOutput
from bitdance_rt.request import check_int
from types import SimpleNamespace

from bitdance_rt.families import ClassConditional, TextToImage
from bitdance_rt.sizes import C2I_SIZE, check_t2i_size

FAIL_MARKER = "[fail]"
TERMINAL = ("done", "cancelled", "failed")


class RequestCancelled(BitDanceError):
    """``result()`` of a cancelled request."""


class FakeHandle:
    def __init__(self, rid: str, params: dict[str, Any], total: int):
        self.id = rid
        self.params = params
        self._total = total
        self._step = 0
        self._status = "queued"
        self._error: BaseException | None = None
        self._images: list[Image.Image] | None = None
        self._listeners: list[Callable[[dict], None]] = []
        self._lock = threading.Lock()
        self._finished = threading.Event()
        seed = params.get("seed")
        self.seed = 0 if seed is None else seed
        rng = np.random.default_rng(self.seed)
        self._pixels = rng.integers(0, 256, size=(params["num_images"], params["height"], params["width"], 3),
                                    dtype=np.uint8)

    # ---------------------------------------------------------------- the handle interface
    @property
    def status(self) -> str:
        return self._status

    @property
    def done(self) -> bool:
        return self._status in TERMINAL

    @property
    def progress(self) -> tuple[int, int]:
        return self._step, self._total

    def add_listener(self, fn: Callable[[dict], None]) -> None:
        with self._lock:
            self._listeners.append(fn)

    def wait(self, timeout: float | None = None) -> bool:
        return self._finished.wait(timeout)

    def result(self, timeout: float | None = None) -> GenerationOutput:
        if not self._finished.wait(timeout):
            raise TimeoutError(f"request {self.id} is not finished after {timeout} s")
        if self._status == "cancelled":
            raise RequestCancelled(f"request {self.id} was cancelled")
        if self._status == "failed":
            raise RuntimeError(f"request {self.id} failed: {self._error}")
        h, w = self.params["height"], self.params["width"]
        return GenerationOutput(images=list(self._images), tokens=None, height=h, width=w, seed=self.seed)

    def cancel(self) -> bool:
        with self._lock:
            if self.done:
                return False
            self._status = "cancelled"
        self._finish({"type": "cancelled"})
        return True

    def preview(self, output_type: str = "pil") -> list[Image.Image]:
        if output_type != "pil":
            raise InvalidRequestError(f"the fake runtime previews as 'pil' only, got {output_type!r}")
        rows = self.params["height"] * self._step // self._total
        part = self._pixels.copy()
        part[:, rows:] = 0
        return [Image.fromarray(p) for p in part]

    # ---------------------------------------------------------------- driven by the worker
    def _emit(self, event: dict) -> None:
        for fn in list(self._listeners):
            fn(event)

    def _finish(self, event: dict) -> None:
        self._finished.set()
        self._emit(event)

    def _advance(self) -> None:
        with self._lock:
            if self.done:
                return
            self._status = "running"
            self._step += 1
            step = self._step
        if FAIL_MARKER in (self.params.get("prompt") or "") and step == 2:
            with self._lock:
                self._status = "failed"
                self._error = RuntimeError("injected failure")
            self._finish({"type": "failed", "error": "injected failure"})
            return
        self._emit({"type": "progress", "step": step, "total": self._total})
        if step == self._total:
            self._images = [Image.fromarray(p) for p in self._pixels]
            with self._lock:
                if self.done:
                    return
                self._status = "done"
            self._finish({"type": "done"})


def _fake_family(family: str, parallel: int, downsample: int):
    """The runtime's family object over a stand-in model holding only the facts the families read."""
    layout = SimpleNamespace(downsample=downsample)
    if family == "t2i":
        return TextToImage(SimpleNamespace(parallel=parallel, decoder_layout=layout))
    config = SimpleNamespace(grid=C2I_SIZE[0] // downsample, num_classes=1000, dim=0, num_layers=0, parallel=parallel)
    return ClassConditional(SimpleNamespace(parallel=parallel, decoder_layout=layout, config=config))


class FakeRuntime:
    """See the module docstring. ``family``, ``parallel``, ``model.decoder_layout.downsample`` and ``describe()``
    match the attributes of ``Runtime`` that the server reads."""

    def __init__(self, family: str = "t2i", parallel: int = 64, downsample: int = 16, step_time: float = 0.005,
                 max_images: int = 8):
        self.family = _fake_family(family, parallel, downsample)
        self.parallel = parallel
        self.downsample = downsample
        self.model = type("FakeModel", (), {"decoder_layout": type("Layout", (), {"downsample": downsample})()})()
        self.step_time = step_time
        self.max_images = max_images
        self.submitted: list[FakeHandle] = []
        self._active: list[FakeHandle] = []
        self._ids = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False
        self._held = False
        self._images_done = 0
        self._step_latency = 0.0
        self._started = time.perf_counter()

    def describe(self) -> dict[str, Any]:
        return {"family": self.family.key, "backend": "fake", "device": "cpu", "dtype": "float32",
                "tokens_per_step": self.parallel}

    def submit(self, request=None, **kwargs) -> FakeHandle:
        if request is not None:
            kwargs = {k: getattr(request, k) for k in ("prompt", "class_label", "negative_prompt", "height", "width",
                                                        "num_images", "num_sampling_steps", "guidance_scale", "seed",
                                                        "output_type")}
        params = {k: v for k, v in kwargs.items() if v is not None}
        params.setdefault("num_images", 1)
        check_int("num_images", params["num_images"], 1)
        if params["num_images"] > self.max_images:
            raise InvalidRequestError(f"num_images={params['num_images']} can never fit the memory budget of this "
                                      f"server (at most {self.max_images} images per request).")
        if self.family.key == "t2i":
            if not isinstance(params.get("prompt"), str):
                raise InvalidRequestError("this text-to-image model needs a prompt.")
            params.setdefault("height", 1024)
            params.setdefault("width", 1024)
            check_t2i_size(params["height"], params["width"])
        else:
            if "class_label" not in params:
                raise InvalidRequestError("this class-conditional model needs a class_label.")
            params.setdefault("height", C2I_SIZE[0])
            params.setdefault("width", C2I_SIZE[1])
        total = params["height"] * params["width"] // (self.downsample ** 2 * self.parallel)
        handle = FakeHandle(f"fake-{next(self._ids)}", params, total)
        with self._cond:
            self.submitted.append(handle)
            self._active.append(handle)
            self._cond.notify_all()
        return handle

    def start_worker(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._stop = False
            self._thread = threading.Thread(target=self._run, name="fake-worker", daemon=True)
            self._thread.start()

    def stop_worker(self, cancel: bool = False, timeout: float | None = None) -> bool:
        with self._cond:
            if cancel:
                for h in list(self._active):
                    h.cancel()
            self._stop = True
            self._held = False
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def hold(self) -> None:
        with self._cond:
            self._held = True

    def release(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()

    def stats(self) -> dict[str, Any]:
        with self._cond:
            running = [h for h in self._active if h.status == "running"]
            queued = [h for h in self._active if h.status == "queued"]
            elapsed = max(time.perf_counter() - self._started, 1e-9)
            return {"queue_length": len(queued), "active_requests": len(running),
                    "images_completed": self._images_done, "images_per_second": self._images_done / elapsed,
                    "step_latency_s": self._step_latency}

    def _run(self) -> None:
        while True:
            with self._cond:
                self._active = [h for h in self._active if not h.done]
                while (self._held or not self._active) and not (self._stop and not self._active):
                    self._cond.wait(0.05)
                    self._active = [h for h in self._active if not h.done]
                if self._stop and not self._active:
                    return
                batch = list(self._active)
            t0 = time.perf_counter()
            time.sleep(self.step_time)
            for h in batch:
                h._advance()
                if h.status == "done":
                    with self._cond:
                        self._images_done += h.params["num_images"]
            self._step_latency = time.perf_counter() - t0
