"""Choosing the backend a runtime generates with.

- ``"reference"``: the plain PyTorch modules in the release's call structure and random-number order (the oracle).
- ``"triton"``: the engine (``bitdance_rt.engine``): one batch for guidance rows, static KV cache, Triton kernels,
  per-request noise. It runs on CUDA; on the CPU only through Triton's interpreter (``TRITON_INTERPRET=1`` set before
  Python starts), which is slow and meant for tests.
- ``"auto"`` (the default): ``"triton"`` on a CUDA device, ``"reference"`` elsewhere.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from .errors import InvalidRequestError, UnsupportedDeviceError

BACKENDS = ("auto", "reference", "triton")


def triton_interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise InvalidRequestError(f"backend={backend!r} is unknown; choose one of {', '.join(BACKENDS)}.")
    if backend == "auto":
        return "triton" if device.type == "cuda" else "reference"
    if backend == "triton" and device.type != "cuda" and not triton_interpreter_on():
        raise UnsupportedDeviceError(
            f"backend='triton' runs its kernels on CUDA devices; on {device.type} they run only through Triton's "
            "interpreter: set TRITON_INTERPRET=1 before starting Python (slow, for tests), or use "
            "backend='reference'.")
    if backend == "triton" and importlib.util.find_spec("triton") is None:
        raise UnsupportedDeviceError("backend='triton' needs the triton package: pip install triton")
    return backend


def build_engine(model):
    """The engine for a loaded model (imports the kernels, hence Triton, only now)."""
    from .engine.c2i_engine import C2IEngine
    from .engine.t2i_engine import T2IEngine
    from .loading.t2i_checkpoint import T2IModel

    return T2IEngine(model) if isinstance(model, T2IModel) else C2IEngine(model)
