"""Choosing the backend a runtime generates with.

- ``"reference"``: the plain PyTorch modules in the release's call structure and random-number order (the oracle).
- ``"triton"``: the engine (``bitdance_rt.engine``): one batch for guidance rows, static KV cache, Triton kernels,
  per-request noise. It runs on CUDA; on the CPU only through Triton's interpreter (``TRITON_INTERPRET=1`` set before
  Python starts), which is slow and meant for tests.
- ``"cuda"``: the same engine with the hand-written CUDA kernels (``csrc/``, built on first use) for the operations
  they have, Triton for the rest. CUDA devices only.
- ``"auto"`` (the default): ``"cuda"`` on a CUDA device (``"triton"`` when the extension cannot be built there),
  ``"reference"`` elsewhere.

The engine's operations come from ``bitdance_rt.ops.OpSet``: per operation the first provider of the backend's chain
(``cuda`` -> ``triton`` -> ``torch``) that has it; ``Runtime.describe()["engine"]["ops"]`` lists the choice.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from .errors import InvalidRequestError, UnsupportedDeviceError

BACKENDS = ("auto", "reference", "triton", "cuda")


def triton_interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise InvalidRequestError(f"backend={backend!r} is unknown; choose one of {', '.join(BACKENDS)}.")
    if backend == "auto":
        if device.type != "cuda":
            return "reference"
        from . import cuda_ext

        return "cuda" if cuda_ext.load_extension() else "triton"
    if backend == "cuda":
        from . import cuda_ext

        if device.type != "cuda":
            raise UnsupportedDeviceError(f"backend='cuda' runs hand-written CUDA kernels; the device is {device.type}. "
                                         "Use backend='reference' (or 'triton' with TRITON_INTERPRET=1 for tests).")
        if not cuda_ext.load_extension():
            raise UnsupportedDeviceError(f"backend='cuda': the CUDA extension is unavailable ({cuda_ext.status()}); "
                                         "use backend='triton', or install the CUDA toolkit so it can be built.")
        return backend
    if backend == "triton" and device.type != "cuda" and not triton_interpreter_on():
        raise UnsupportedDeviceError(
            f"backend='triton' runs its kernels on CUDA devices; on {device.type} they run only through Triton's "
            "interpreter: set TRITON_INTERPRET=1 before starting Python (slow, for tests), or use "
            "backend='reference'.")
    if backend == "triton" and importlib.util.find_spec("triton") is None:
        raise UnsupportedDeviceError("backend='triton' needs the triton package: pip install triton")
    return backend


def build_engine(model, backend: str, device: torch.device, ops_chain: str | None = None):
    """The engine for a loaded model, its operations resolved for ``backend`` (``"triton"`` or ``"cuda"``) or an
    explicit chain (``"torch"``: the PyTorch reference operations). Imports the kernels only now."""
    from .engine.c2i_engine import C2IEngine
    from .engine.t2i_engine import T2IEngine
    from .loading.t2i_checkpoint import T2IModel
    from .ops import OpSet

    ops = OpSet(device, ops_chain or backend)
    return T2IEngine(model, ops) if isinstance(model, T2IModel) else C2IEngine(model, ops)
