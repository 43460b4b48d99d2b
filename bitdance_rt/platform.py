"""What this machine offers, decided once per runtime: the device and dtype, the backend (with the Triton
interpreter and the CUDA extension's status), each with a clear error for what the machine lacks.

Backends:
- ``"reference"``: the plain PyTorch modules in the release's call structure and random-number order (the oracle);
  ``submit``/``step`` run the engine with the PyTorch operations.
- ``"triton"``: the engine (``bitdance_rt.engine``) with Triton kernels: CUDA devices, or the CPU through Triton's
  interpreter (``TRITON_INTERPRET=1`` set before Python starts; slow, for tests).
- ``"cuda"``: the engine with the hand-written CUDA kernels (``csrc/``, built on first use) for the operations they
  have, Triton for the rest. CUDA devices only.
- ``"auto"`` (the default): ``"cuda"`` on a CUDA device (``"triton"`` when the extension cannot be built there),
  ``"reference"`` elsewhere.
The engine's operations come from ``bitdance_rt.ops.OpSet``: per operation the first provider of the backend's chain
(``cuda`` -> ``triton`` -> ``torch``) that has it, unless overridden.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from .errors import InvalidRequestError, UnsupportedDeviceError

BACKENDS = ("auto", "reference", "triton", "cuda")

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_DTYPE_NAMES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float16": torch.float16, "fp16": torch.float16, "float64": torch.float64}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` picks the first CUDA device when there is one, else the CPU."""
    if device is None:
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise UnsupportedDeviceError(f"device={device!r} is not a device name torch understands "
                                     "(use 'cpu', 'cuda' or 'cuda:N').") from e
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise UnsupportedDeviceError(f"device={device!r}: only 'cpu' and 'cuda' devices are supported.")
    if not torch.cuda.is_available():
        raise UnsupportedDeviceError(f"device={device!r} was requested but this machine has no usable CUDA device "
                                     "(torch.cuda.is_available() is False); use device='cpu'.")
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise UnsupportedDeviceError(f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA "
                                     f"device(s), numbered 0..{torch.cuda.device_count() - 1}.")
    return torch.device("cuda", index)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None`` gives bfloat16 on CUDA and float32 on the CPU."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        if dtype not in _DTYPE_NAMES:
            raise UnsupportedDeviceError(f"dtype={dtype!r} is unknown; use one of {sorted(_DTYPE_NAMES)}.")
        dtype = _DTYPE_NAMES[dtype]
    if dtype not in SUPPORTED_DTYPES:
        raise UnsupportedDeviceError(f"dtype={dtype} is not supported; use float32, bfloat16, float16 or float64.")
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise UnsupportedDeviceError(f"{torch.cuda.get_device_name(device)} does not support bfloat16; "
                                     "use dtype=torch.float16 or torch.float32.")
    return dtype


def triton_interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise InvalidRequestError(f"backend={backend!r} is unknown; choose one of {', '.join(BACKENDS)}.",
                                  param="backend")
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


def engine_chain(backend: str) -> str:
    """The operation providers' chain of a resolved backend: the reference backend's engine (serving) uses the
    PyTorch operations."""
    return "torch" if backend == "reference" else backend
