"""The 8-bit weight formats a runtime may load with, their numeric constants, and the device check.

``quantization``: ``None`` (the checkpoint's precision), ``"fp8"`` (e4m3 weights with float32 scales per output
channel or per 128×128 block, activations quantized to e4m3 on the fly per token or per 1×128 group: W8A8) or
``"int8"`` (symmetric int8 weights with a float32 scale per output channel, activations stay in the model's dtype:
weight-only). On a CUDA device fp8 needs FP8 tensor cores (compute capability 8.9: Ada, Hopper and newer); int8 runs
on any CUDA device. On the CPU both run through the plain-PyTorch reference math (``reference_linear``).

Scales: ``scale = max(amax / QMAX, SCALE_FLOOR)`` where amax is the largest magnitude of the row, block or group, so
the largest element maps to ±QMAX; the floor keeps an all-zero row or block at a finite, non-zero scale (its codes
are all 0 and dequantize to exactly 0).
"""

from __future__ import annotations

import torch

from ..errors import InvalidRequestError, UnsupportedDeviceError

QUANTIZATIONS = (None, "fp8", "int8")
WEIGHT_FORMATS = ("fp8", "int8")
ACT_QUANTS = ("token", "group", None)  # fp8 activations: per token, per 1×128 group, or not quantized (weight-only)
# what a runtime loaded with quantization=fmt runs: fp8 W8A8 with per-token activation scales (the layout
# torch._scaled_mm also takes), int8 weight-only. The loader and the engine's linear both read it.
RUNTIME_ACT_QUANT = {"fp8": "token", "int8": None}

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0          # largest finite e4m3fn value
INT8_MAX = 127           # symmetric int8: codes -127..127 (-128 is never produced)
BLOCK = 128              # side of a weight scale block, and the width of an activation scale group
SCALE_FLOOR = 2.0 ** -64  # smallest scale; rows, blocks or groups with amax < QMAX·2^-64 use it
FP8_MIN_CAPABILITY = (8, 9)


def _describe(value) -> str:
    return repr(value)


def check_quantization(value, device: torch.device | str, capability: tuple[int, int] | None = None) -> str | None:
    """Validate a ``quantization=`` argument for ``device``; returns it (``None``, ``"fp8"`` or ``"int8"``).

    ``capability`` overrides ``torch.cuda.get_device_capability(device)`` (for tests and for planning on another
    machine). Raises ``InvalidRequestError`` for an unknown value and ``UnsupportedDeviceError`` for fp8 on a CUDA
    device without FP8 support. On the CPU every choice is accepted: the reference math runs there."""
    if not (value is None or (isinstance(value, str) and value in WEIGHT_FORMATS)):
        choices = ", ".join(_describe(v) for v in QUANTIZATIONS)
        raise InvalidRequestError(f"quantization={_describe(value)} is unknown; choose one of {choices} (None keeps "
                                  "the checkpoint's precision, 'fp8' needs compute capability >= 8.9, 'int8' runs "
                                  "on any CUDA GPU and on the CPU).")
    device = torch.device(device)
    if value != "fp8" or device.type != "cuda":
        return value
    if capability is None:
        capability = tuple(torch.cuda.get_device_capability(device))
    if tuple(capability) < FP8_MIN_CAPABILITY:
        name = torch.cuda.get_device_name(device) if torch.cuda.is_available() else "this GPU"
        major, minor = capability
        raise UnsupportedDeviceError(
            f"quantization='fp8' needs FP8 tensor cores (CUDA compute capability >= 8.9: Ada, Hopper or newer); "
            f"{device} ({name}) has compute capability {major}.{minor}. Use quantization='int8' (8-bit weights, "
            "activations in the model's dtype) on this device.")
    return value


def check_act_quant(fmt: str, act_quant) -> None:
    """``act_quant`` for weights of format ``fmt``: int8 is weight-only (``None``); fp8 takes any of ACT_QUANTS."""
    if fmt not in WEIGHT_FORMATS:
        raise InvalidRequestError(f"weight format {fmt!r} is unknown; use one of {WEIGHT_FORMATS}.")
    if act_quant not in ACT_QUANTS:
        raise InvalidRequestError(f"act_quant={act_quant!r} is unknown; use 'token' (one fp8 scale per token), "
                                  "'group' (one per 1x128 group) or None (activations not quantized).")
    if fmt == "int8" and act_quant is not None:
        raise InvalidRequestError(f"int8 weights are weight-only: act_quant must be None, found {act_quant!r}; "
                                  "quantized activations need fp8 weights.")
