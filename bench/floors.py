"""Speed floors for a benchmark row: bytes moved at the measured copy bandwidth, FLOPs at the measured bf16
matrix rate. Both rates are measured once per process on the current GPU, never taken from a data sheet."""

from __future__ import annotations

import functools

import torch


def time_cuda(fn, warmup: int = 5, iters: int = 20) -> float:
    """Mean seconds per call of ``fn`` launched back to back on the current CUDA stream (CUDA events): for small
    kernels this includes the host's launch cost."""
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


def time_graphed(fn, calls: int = 20, replays: int = 15) -> tuple[float, str]:
    """Seconds per call of ``fn`` as the engine runs it, inside a CUDA graph (``calls`` calls captured once, the
    median over ``replays`` replays), so host launch cost is left out: ``(seconds, "graph")``. Falls back to
    ``time_cuda`` (``"eager"``) when ``fn`` cannot be captured (e.g. it reads a device value on the host)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    try:
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
    except Exception:  # not capturable: time it eagerly instead, and say so
        torch.cuda.synchronize()
        return time_cuda(fn), "eager"
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / calls)
    return sorted(times)[len(times) // 2], "graph"


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


def cuda_randn(*shape: int, seed: int, dtype: torch.dtype = torch.bfloat16, scale: float = 1.0) -> torch.Tensor:
    """Fresh standard normals on the GPU from a seeded generator, in ``dtype``."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(*shape, generator=gen, device="cuda", dtype=torch.float32).mul_(scale).to(dtype)


def record_row(benchmark, ours, candidates: dict, bytes_moved: float, flops: float = 0.0, iters: int = 100) -> None:
    """One benchmark row: the graphed time of ``ours`` and of each candidate (``"reference"``, ``"sdpa"``,
    ``"flash_attn"``, ``"triton"``, ...; eager where a candidate cannot be captured, as ``timing`` records), our
    eager back-to-back time (``ours_eager_s``, host launch cost included), the floor of the shape and our time over
    it (and over the best of SDPA / flash-attn) into ``benchmark.extra_info`` with the environment; ``ours`` also
    through pytest-benchmark, each round synchronised."""
    floor = floor_seconds(bytes_moved=bytes_moved, flops=flops)
    ours_s, ours_mode = time_graphed(ours)
    timed = {name: time_graphed(fn) for name, fn in candidates.items()}
    times = {name: t for name, (t, _) in timed.items()}
    modes = {"ours": ours_mode, **{name: mode for name, (_, mode) in timed.items()}}
    benchmark.extra_info.update({
        "floor_s": floor, "bytes": bytes_moved, "flops": flops, "ours_s": ours_s, "ours_over_floor": ours_s / floor,
        "ours_eager_s": time_cuda(ours, iters=iters), "timing": modes,
        **{f"{name}_s": t for name, t in times.items()}, **environment()})
    others = [t for name, t in times.items() if name not in ("reference", "triton")]
    if others:
        benchmark.extra_info["ours_over_best_of_sdpa_flash"] = ours_s / min(others)

    def synchronized():
        ours()
        torch.cuda.synchronize()

    benchmark.pedantic(synchronized, rounds=50, warmup_rounds=5)
