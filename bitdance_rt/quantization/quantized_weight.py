"""8-bit weights: ``QuantizedWeight`` and the quantizers that make one from a float weight, one tensor at a time.

A linear's weight ``w [N, K]`` (N output channels, K input channels, as ``nn.Linear`` stores it) becomes
``data [N, K]`` (``torch.int8`` or ``torch.float8_e4m3fn``) and float32 ``scales``:

- per output channel (``block=None``): ``scales [N]``, ``w[n, k] ≈ data[n, k] · scales[n]``;
- per 128×128 block (``block=128``, fp8 only): ``scales [ceil(N/128), ceil(K/128)]``,
  ``w[n, k] ≈ data[n, k] · scales[n // 128, k // 128]`` (edge blocks cover what is left of N and K).

Rounding (both formats): ``amax`` is the largest ``|w|`` of the channel or block in float32;
``scale = max(amax / QMAX, SCALE_FLOOR)`` (QMAX 448 for e4m3, 127 for int8); the code of ``w`` is the float32
quotient ``w / scale`` clamped to ``[-QMAX, QMAX]`` and rounded to nearest, ties to even: for fp8 that rounding is
``tensor.to(torch.float8_e4m3fn)`` itself, for int8 ``torch.round`` (half to even). The largest element of each
channel or block maps to ±QMAX. NaN or ±Inf weights are refused (``CheckpointError`` naming the tensor and the
count): a quantized model must not hide a damaged checkpoint.

Memory: the quantizers read the source in chunks of ``CHUNK_ROWS`` rows, so besides the source and the 8-bit result
only one chunk's float32 copy is alive; they never modify the source. Dropping the last reference to the source
(``del``) after quantizing frees it: loaders quantize each weight right after reading it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import CheckpointError, InvalidRequestError
from .formats import BLOCK, FP8_DTYPE, FP8_MAX, INT8_MAX, SCALE_FLOOR, WEIGHT_FORMATS

CHUNK_ROWS = 1024  # rows quantized at a time (a multiple of BLOCK)
FLOAT_SOURCES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


@dataclass(frozen=True)
class QuantizedWeight:
    """An 8-bit weight ``[N, K]``: ``data`` (int8 or float8_e4m3fn) and float32 ``scales`` (``[N]`` per output
    channel, or ``[ceil(N/128), ceil(K/128)]`` per 128×128 block when ``block`` is 128)."""
    data: torch.Tensor
    scales: torch.Tensor
    fmt: str
    block: int | None = None

    def __post_init__(self):
        if self.fmt not in WEIGHT_FORMATS:
            raise InvalidRequestError(f"QuantizedWeight: format {self.fmt!r} is unknown; use one of {WEIGHT_FORMATS}")
        want = torch.int8 if self.fmt == "int8" else FP8_DTYPE
        if self.data.dtype != want or self.data.ndim != 2:
            raise InvalidRequestError(f"QuantizedWeight: {self.fmt} data must be 2-D {want}, found "
                                      f"{self.data.dtype} {list(self.data.shape)}")
        if self.scales.dtype != torch.float32 or self.scales.device != self.data.device:
            raise InvalidRequestError(f"QuantizedWeight: scales must be float32 on {self.data.device}, found "
                                      f"{self.scales.dtype} on {self.scales.device}")
        if self.block not in (None, BLOCK) or (self.block is not None and self.fmt != "fp8"):
            raise InvalidRequestError(f"QuantizedWeight: block must be None or {BLOCK} (fp8 only), found "
                                      f"{self.block!r} for {self.fmt}")
        if tuple(self.scales.shape) != scale_shape(*self.data.shape, self.block):
            raise InvalidRequestError(f"QuantizedWeight: scales have shape {list(self.scales.shape)}, expected "
                                      f"{list(scale_shape(*self.data.shape, self.block))} for data "
                                      f"{list(self.data.shape)} with block={self.block}")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.data.shape)

    @property
    def out_features(self) -> int:
        return self.data.shape[0]

    @property
    def in_features(self) -> int:
        return self.data.shape[1]

    @property
    def device(self) -> torch.device:
        return self.data.device

    def nbytes(self) -> int:
        """Bytes held: the 8-bit codes plus the float32 scales."""
        return self.data.numel() * self.data.element_size() + self.scales.numel() * self.scales.element_size()

    def to(self, device: torch.device | str) -> "QuantizedWeight":
        return QuantizedWeight(self.data.to(device), self.scales.to(device), self.fmt, self.block)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self, dtype)


def scale_shape(n: int, k: int, block: int | None) -> tuple[int, ...]:
    return (n,) if block is None else (-(-n // block), -(-k // block))


def _check_source(w: torch.Tensor, name: str) -> None:
    if not isinstance(w, torch.Tensor):
        raise InvalidRequestError(f"{name}: expected a torch.Tensor to quantize, got {type(w).__name__}")
    if w.ndim != 2 or w.dtype not in FLOAT_SOURCES:
        raise InvalidRequestError(f"{name}: only 2-D float weights [out_features, in_features] are quantized; "
                                  f"found {w.dtype} {list(w.shape)}")
    if w.device.type == "meta":
        raise InvalidRequestError(f"{name}: is on the meta device (no values); quantize the tensor read from the "
                                  "file (quantize_linears(..., fetch=...) reads it)")


def _refuse_non_finite(amax: torch.Tensor, chunk: torch.Tensor, name: str, first_row: int) -> None:
    """amax is NaN or Inf exactly where the channel or block holds a NaN or an Inf (max propagates both)."""
    if bool(torch.isfinite(amax).all()):
        return
    bad = ~torch.isfinite(chunk)
    rows = bad.any(dim=1).nonzero().flatten()
    raise CheckpointError(
        f"{name}: holds {int(bad.sum())} non-finite value(s) (NaN or Inf), first in row {first_row + int(rows[0])}; "
        "8-bit quantization refuses them (a scale cannot represent them). The checkpoint file is damaged or not a "
        "release file: download it again, or load without quantization to inspect it.")


def _scales_from_amax(amax: torch.Tensor, qmax: float) -> torch.Tensor:
    return (amax / qmax).clamp_min(SCALE_FLOOR)


def _expand_blocks(scales: torch.Tensor, rows: int, cols: int, block: int) -> torch.Tensor:
    """Block scales ``[R, C]`` -> one scale per element ``[rows, cols]``."""
    return scales.repeat_interleave(block, dim=0)[:rows].repeat_interleave(block, dim=1)[:, :cols]


def _block_amax(chunk: torch.Tensor, block: int) -> torch.Tensor:
    rows, cols = chunk.shape
    padded = F.pad(chunk.abs(), (0, (-cols) % block, 0, (-rows) % block))
    return padded.view(padded.shape[0] // block, block, padded.shape[1] // block, block).amax(dim=(1, 3))


def quantize_fp8(w: torch.Tensor, block: int | None = None, *, name: str = "weight") -> QuantizedWeight:
    """e4m3 codes and float32 scales of ``w [N, K]``: per output channel (``block=None``) or per 128×128 block."""
    _check_source(w, name)
    if block not in (None, BLOCK):
        raise InvalidRequestError(f"{name}: block must be None (per output channel) or {BLOCK}, found {block!r}")
    n, k = w.shape
    data = torch.empty((n, k), dtype=FP8_DTYPE, device=w.device)
    scales = torch.empty(scale_shape(n, k, block), dtype=torch.float32, device=w.device)
    for start in range(0, n, CHUNK_ROWS):
        chunk = w[start:start + CHUNK_ROWS].to(torch.float32)
        rows = chunk.shape[0]
        if block is None:
            amax = chunk.abs().amax(dim=1)
            _refuse_non_finite(amax, chunk, name, start)
            chunk_scales = _scales_from_amax(amax, FP8_MAX)
            scales[start:start + rows] = chunk_scales
            per_element = chunk_scales[:, None]
        else:
            amax = _block_amax(chunk, block)
            _refuse_non_finite(amax, chunk, name, start)
            chunk_scales = _scales_from_amax(amax, FP8_MAX)
            scales[start // block:start // block + chunk_scales.shape[0]] = chunk_scales
            per_element = _expand_blocks(chunk_scales, rows, k, block)
        data[start:start + rows] = (chunk / per_element).clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
        del chunk, per_element
    return QuantizedWeight(data, scales, "fp8", block)


def quantize_int8(w: torch.Tensor, *, name: str = "weight") -> QuantizedWeight:
    """Symmetric int8 codes (-127..127) and a float32 scale per output channel of ``w [N, K]``."""
    _check_source(w, name)
    n, k = w.shape
    data = torch.empty((n, k), dtype=torch.int8, device=w.device)
    scales = torch.empty((n,), dtype=torch.float32, device=w.device)
    for start in range(0, n, CHUNK_ROWS):
        chunk = w[start:start + CHUNK_ROWS].to(torch.float32)
        amax = chunk.abs().amax(dim=1)
        _refuse_non_finite(amax, chunk, name, start)
        chunk_scales = _scales_from_amax(amax, float(INT8_MAX))
        scales[start:start + chunk.shape[0]] = chunk_scales
        data[start:start + chunk.shape[0]] = (chunk / chunk_scales[:, None]).round_().clamp_(-INT8_MAX, INT8_MAX) \
            .to(torch.int8)
        del chunk
    return QuantizedWeight(data, scales, "int8", None)


def quantize_weight(w: torch.Tensor, fmt: str, *, block: int | None = None, name: str = "weight") -> QuantizedWeight:
    """``quantize_fp8`` or ``quantize_int8`` by ``fmt``; ``block`` (128) only for fp8."""
    if fmt == "fp8":
        return quantize_fp8(w, block, name=name)
    if fmt == "int8":
        if block is not None:
            raise InvalidRequestError(f"{name}: int8 weights have one scale per output channel; block must be None, "
                                      f"found {block!r}")
        return quantize_int8(w, name=name)
    raise InvalidRequestError(f"{name}: weight format {fmt!r} is unknown; use one of {WEIGHT_FORMATS}")


def dequantize(qw: QuantizedWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``data · scales`` in float32 (float64 when asked for float64), then cast to ``dtype``: ``[N, K]``."""
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    values = qw.data.to(wide)
    n, k = qw.shape
    if qw.block is None:
        scales = qw.scales.to(wide)[:, None]
    else:
        scales = _expand_blocks(qw.scales.to(wide), n, k, qw.block)
    return (values * scales).to(dtype)


def concat_quantized(parts: list[QuantizedWeight]) -> QuantizedWeight:
    """The weights of linears that read the same input (q/k/v, gate/up) as one ``[sum N, K]`` weight, equal to
    quantizing the concatenated float weight: per-channel scales concatenate; block scales do too when every part
    but the last has a multiple of 128 rows (true of every released shape)."""
    if not parts:
        raise InvalidRequestError("concat_quantized: no weights given")
    first = parts[0]
    for i, p in enumerate(parts):
        if (p.fmt, p.block, p.in_features, p.device) != (first.fmt, first.block, first.in_features, first.device):
            raise InvalidRequestError(
                f"concat_quantized: part {i} is {p.fmt} block={p.block} K={p.in_features} on {p.device}, part 0 is "
                f"{first.fmt} block={first.block} K={first.in_features} on {first.device}; they must agree")
        if first.block is not None and i < len(parts) - 1 and p.out_features % first.block:
            raise InvalidRequestError(
                f"concat_quantized: part {i} has {p.out_features} rows, not a multiple of the {first.block}-row "
                "scale blocks; quantize the concatenated weight instead")
    return QuantizedWeight(torch.cat([p.data for p in parts]), torch.cat([p.scales for p in parts]), first.fmt,
                           first.block)
