"""Resolving the device and dtype a runtime runs on, with clear errors for what this machine lacks."""

from __future__ import annotations

import torch

from .errors import UnsupportedDeviceError

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
