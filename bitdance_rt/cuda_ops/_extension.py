"""The one way a launcher reaches its operator: ``operator(op, device, triton_module, source)`` returns
``torch.ops.bitdance_rt.<op>``, or raises ``UnsupportedDeviceError`` saying why it cannot run here and what to use
instead (the Triton kernel in ``kernels/<triton_module>.py``, or the PyTorch reference)."""

from __future__ import annotations

import torch

from bitdance_rt import cuda_ext
from bitdance_rt.errors import UnsupportedDeviceError


def operator(op: str, device: torch.device, triton_module: str, source: str):
    triton = f"kernels/{triton_module}.py"
    if device.type != "cuda":
        raise UnsupportedDeviceError(f"{op}: the CUDA extension runs on CUDA tensors, got tensors on {device}; use "
                                     f"the Triton kernel ({triton}) or the PyTorch reference there")
    if not cuda_ext.load_extension():
        raise UnsupportedDeviceError(f"{op}: the CUDA extension is unavailable ({cuda_ext.status()}); use the "
                                     f"Triton kernel ({triton}) instead")
    if not cuda_ext.has_op(op):
        raise UnsupportedDeviceError(f"{op}: the loaded CUDA extension has no operator {op} (built without "
                                     f"csrc/{source}?); rebuild it from the current csrc/")
    return getattr(torch.ops.bitdance_rt, op)
