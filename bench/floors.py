"""Speed floors for a benchmark row: bytes moved at the measured copy bandwidth, FLOPs at the measured bf16
matrix rate. Both rates are measured once per process on the current GPU, never taken from a data sheet."""

from __future__ import annotations

import functools

import torch


def time_cuda(fn, warmup: int = 5, iters: int = 20) -> float:
    """Mean seconds per call of ``fn`` on the current CUDA stream (CUDA events)."""
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


@functools.lru_cache(maxsize=None)
def copy_bandwidth() -> float:
    """Bytes per second of a 2 GiB device-to-device copy, counting bytes read and written."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    seconds = time_cuda(lambda: dst.copy_(src))
    return 2 * src.numel() / seconds


@functools.lru_cache(maxsize=None)
def matmul_rate() -> float:
    """bf16 FLOP/s of an 8192^3 matrix product on random data."""
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    return 2 * n ** 3 / time_cuda(lambda: a @ b)


def floor_seconds(bytes_moved: float = 0.0, flops: float = 0.0) -> float:
    """The larger of the memory and compute floors of one call."""
    return max(bytes_moved / copy_bandwidth() if bytes_moved else 0.0, flops / matmul_rate() if flops else 0.0)


def environment() -> dict[str, str]:
    """What a committed table must name: GPU, driver, versions."""
    import subprocess

    import triton

    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        driver = "unknown"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"gpu": torch.cuda.get_device_name(), "driver": driver, "torch": torch.__version__,
            "triton": triton.__version__, "commit": commit}
