"""Argument checks shared by every provider's launchers (the Triton kernels in ``kernels/``, the CUDA operators in
``bitdance_rt/cuda_ops/``): every error names the kernel, the argument and what to pass."""

from __future__ import annotations

import torch


def check_tensor(kernel: str, name: str, t: torch.Tensor, *, shape: tuple | None = None,
                 dtype: torch.dtype | tuple[torch.dtype, ...] | None = None, device: torch.device | None = None,
                 contiguous: bool = True) -> None:
    """``shape`` may hold ``None`` for free dimensions."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{kernel}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if shape is not None and (t.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape))):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{kernel}: {name} has shape {list(t.shape)}, expected {want}")
    if dtype is not None:
        allowed = dtype if isinstance(dtype, tuple) else (dtype,)
        if t.dtype not in allowed:
            raise ValueError(f"{kernel}: {name} has dtype {t.dtype}, expected {' or '.join(map(str, allowed))}")
    if device is not None and t.device != device:
        raise ValueError(f"{kernel}: {name} is on {t.device}, expected {device} like the other inputs")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{kernel}: {name} must be contiguous; call .contiguous() first")


def check_rows(kernel: str, name: str, t: torch.Tensor, shape: tuple[int, int], dtype: torch.dtype,
               device: torch.device) -> None:
    """A 2-D operand whose rows may be strided (a chunk of a wider tensor) but whose channels are contiguous."""
    check_tensor(kernel, name, t, shape=shape, dtype=dtype, device=device, contiguous=False)
    if t.stride(1) != 1:
        raise ValueError(f"{kernel}: {name} has channel stride {t.stride(1)}, expected 1 (rows may be strided, "
                         "channels must be contiguous); call .contiguous() first")
