"""Ours or cuBLAS, per GEMM shape, for float weights: the measured-choice table.

For an 8-bit ``QuantizedWeight`` the GEMM is always ours (``kernels.int8_weight_gemm`` / ``fp8_gemm``), so its
epilogues (SwiGLU, gated residual) are fused there. For a float weight the engine runs cuBLAS (``F.linear``, then
the separate ``swiglu`` / ``gated_residual`` kernels) unless this table says our ``kernels.float_gemm`` with the
epilogue fused won at that shape in the benchmark:

    MEASURED[(gpu, dtype, epilogue, N, K)] = ((M, splits), ...)

``gpu``: ``torch.cuda.get_device_name()``; ``dtype``: ``"bfloat16"`` / ``"float16"`` / ``"float32"``; ``epilogue``:
``"bias"``, ``"swiglu"`` (N: the weight's rows, 2H) or ``"gated_residual"``; then the batch sizes M at which ours
(with ``splits`` K ranges) was faster than cuBLAS plus the separate kernel, inside CUDA graphs. A GEMM of M rows
takes the entry of its M bucket (the smallest power of two >= max(M, 128), the benchmark's batch sizes); a shape or
bucket not listed runs cuBLAS.

The table is EMPTY: no GPU was available where this was written, so nothing was measured and the default on a GPU
is unchanged (cuBLAS). To fill it, on the GPU the engine runs on:

    python -m pytest bench/test_bench_float_gemm.py -q -s      # prints the table and the entries to paste here

The mode (``OpSet(..., float_gemm=...)``, ``Runtime.from_pretrained(..., float_gemm=...)``): ``"measured"`` (this
table), ``"ours"`` (always our GEMM: tests, benchmarks), ``"cublas"`` (never).
"""

from __future__ import annotations

import torch

MODES = ("measured", "ours", "cublas")
MEASURED: dict[tuple[str, str, str, int, int], tuple[tuple[int, int], ...]] = {}


def m_bucket(m: int) -> int:
    """The batch sizes the benchmark measures: powers of two from 128 (an M is served by the entry of its bucket)."""
    bucket = 128
    while bucket < m:
        bucket *= 2
    return bucket


def choice_for(mode: str, device: torch.device, dtype: torch.dtype, epilogue: str, m: int, n: int, k: int
               ) -> tuple[bool, int | None]:
    """``(ours, split_k)``: whether our float GEMM runs this shape, and its forced split count (None: the tile rule)."""
    if mode == "ours":
        return True, None
    if mode == "cublas" or device.type != "cuda" or not MEASURED:
        return False, None
    return measured_choice(MEASURED, _gpu_name(device), dtype, epilogue, m, n, k)


def measured_choice(table: dict, gpu: str, dtype: torch.dtype, epilogue: str, m: int, n: int, k: int
                    ) -> tuple[bool, int | None]:
    """The lookup of ``choice_for`` in ``table`` (``MEASURED``'s layout) for the GPU named ``gpu``."""
    key = (gpu, str(dtype).replace("torch.", ""), epilogue, n, k)
    for measured_m, splits in table.get(key, ()):
        if measured_m == m_bucket(m):
            return True, splits
    return False, None


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"float_gemm must be one of {MODES} (measured: the benchmark's per-shape choice; ours: always "
                         f"the Triton float GEMM; cublas: always F.linear), found {mode!r}")
    return mode


_NAMES: dict[int, str] = {}


def _gpu_name(device: torch.device) -> str:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _NAMES:
        _NAMES[index] = torch.cuda.get_device_name(index)
    return _NAMES[index]
