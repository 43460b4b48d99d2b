"""Where a pipeline's model lives: moving the loaded weights to another device or dtype, and the pipeline's model
offload (the parts kept in host memory between their uses).

A ``Runtime`` is bound to one device (its engine holds fused weights, static caches and CUDA graphs there), so a
move makes a new ``Runtime`` over the same family object after moving its modules; the old one must not be used
again. The offload runs a call in two stages on the execution device: the autoregressive parts (every module
but the decoder) with a runtime built for the stage, then the decoder alone; between stages and between calls every
part is in host memory. It is for cards that can hold the autoregressive parts but not everything at once, or that
are shared between calls; each call pays the copies and (on the engine backends) a fresh engine.
"""

from __future__ import annotations

import gc
from typing import Any, Callable, TypeVar

import torch

from ..platform import resolve_backend, resolve_device, resolve_dtype
from ..runtime import Runtime

DECODER = "decoder"
T = TypeVar("T")


def move_parts(family, names, device: torch.device, dtype: torch.dtype | None = None) -> None:
    """Move the family's modules ``names`` (all when None) to ``device`` (and ``dtype``), in place."""
    for name, module in family.modules().items():
        if names is None or name in names:
            module.to(device=device, dtype=dtype)


def runtime_on(family, device, dtype, backend: str, options: dict[str, Any]) -> Runtime:
    """A runtime over ``family``'s weights, moved to ``device``/``dtype`` first; ``backend`` as the caller asked
    (``"auto"`` is resolved for the new device)."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    chosen = resolve_backend(backend, dev)
    move_parts(family, None, dev, dt)
    return Runtime(family, dev, dt, chosen, **options)


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class ModelOffload:
    """The two-stage offload of one model: ``offload.generating(fn)`` calls ``fn(runtime)`` with the
    autoregressive parts on the execution device (make tokens with it), ``offload.decoding(fn)`` with only the
    decoder there (``runtime.decode_tokens``); each returns ``fn``'s result after the parts are back in host memory
    and the stage's runtime (engine, caches, graphs) is released."""

    def __init__(self, family, execution_device, dtype: torch.dtype, backend: str, options: dict[str, Any]):
        self.family = family
        self.device = resolve_device(execution_device)
        self.dtype = dtype
        self.backend = backend
        self.options = dict(options)
        self.host = torch.device("cpu")
        move_parts(family, None, self.host, dtype)

    @property
    def autoregressive_parts(self) -> list[str]:
        return [name for name in self.family.modules() if name != DECODER]

    def generating(self, fn: Callable[[Runtime], T]) -> T:
        return self._stage(self.autoregressive_parts, self.backend, fn)

    def decoding(self, fn: Callable[[Runtime], T]) -> T:
        return self._stage([DECODER], "reference", fn)  # decoding needs no engine

    def _stage(self, parts: list[str], backend: str, fn: Callable[[Runtime], T]) -> T:
        move_parts(self.family, parts, self.device, self.dtype)
        try:
            rt = Runtime(self.family, self.device, self.dtype, resolve_backend(backend, self.device), **self.options)
            try:
                return fn(rt)
            finally:
                rt.stop_worker(cancel=True)
                del rt  # the only reference: its engine and caches go now
        finally:
            move_parts(self.family, parts, self.host, self.dtype)
            release_memory(self.device)
