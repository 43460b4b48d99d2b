"""Tile and split-K choice of our GEMMs (``float_gemm``, ``int8_weight_gemm``, ``fp8_gemm``), one rule for all.

``y[M, N] = x[M, K] @ W[N, K]ᵀ``, one program per ``[BLOCK_M, BLOCK_N]`` output tile and K range:

- ``BLOCK_M``: the next power of two of M between 16 and 128 (the decode GEMMs have M = 2·P = 128 or fewer rows;
  a 16-row tile is the smallest a tensor-core dot takes); 128 for larger M. ``BLOCK_N`` = 128.
- split-K: when the output tiles fill less than half the SMs (M = 128, N = 5,120: 40 tiles on 132 SMs), K is cut
  into up to ``MAX_SPLITS`` ranges of whole ``BLOCK_K`` steps (at least ``MIN_STEPS_PER_SPLIT`` steps each) so about
  every SM streams weights; each range writes float32 partial sums that ``_split_k.split_k_reduce`` adds in a fixed
  order (deterministic: no atomics, the same bits every run).
- ``num_stages`` fills about ``SHARED_BUDGET`` bytes of shared memory with the operand tiles of the K loop;
  ``num_warps`` is 8 for 128×128 tiles (two float32 accumulators of 128×128 stay in registers) and for float32
  operands (FMA dot), else 4.

The choice depends on M (as cuBLAS's does): one row's result can differ in the last bits between batch sizes that
pick different tiles or splits; the engine's batch-invariant mode keeps M fixed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton

from bitdance_rt.kernels import _tiles

MAX_SPLITS = 8
MIN_STEPS_PER_SPLIT = 4
SHARED_BUDGET = 160 * 1024
DEFAULT_SMS = 132  # an H100 SXM, used when the device is not a GPU (interpreter, compile-only checks)
INTERPRETER_MAX_BLOCK = 256  # BLOCK_M and BLOCK_N at most, under Triton's interpreter


@dataclass(frozen=True)
class GemmTiles:
    block_m: int
    block_n: int
    block_k: int
    splits: int          # K ranges (1: no split)
    k_per_split: int     # K elements per range, a multiple of block_k
    num_warps: int
    num_stages: int

    def grid(self, m: int, n: int) -> tuple[int, int, int]:
        return triton.cdiv(m, self.block_m), triton.cdiv(n, self.block_n), self.splits


def multiprocessors(device: torch.device) -> int:
    if device.type == "cuda":
        return _cuda_multiprocessors(device.index if device.index is not None else torch.cuda.current_device())
    return DEFAULT_SMS


@functools.lru_cache(maxsize=None)
def _cuda_multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def gemm_tiles(m: int, n: int, k: int, *, block_k: int, x_bytes: int, w_bytes: int, device: torch.device,
               splits: int | None = None, max_block: int = 128, kernel: str = "gemm") -> GemmTiles:
    """Tiles for ``[M, K] @ [N, K]ᵀ`` with ``x_bytes`` / ``w_bytes`` per operand element; ``splits`` forces the
    number of K ranges (1 to the number of ``block_k`` steps), None picks it by the rule above. ``max_block`` caps
    BLOCK_M and BLOCK_N (64 for float32 operands, whose IEEE dot runs on the FMA units, not the tensor cores)."""
    if device.type != "cuda" and _tiles.interpreter_tiles():  # fewer, larger programs (kernels/_tiles.py)
        max_block = INTERPRETER_MAX_BLOCK
    block_m = min(max_block, max(16, triton.next_power_of_2(m)))
    block_n = max_block
    steps = triton.cdiv(k, block_k)
    if splits is None:
        tiles = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
        sms = multiprocessors(device)
        splits = 1
        if 2 * tiles <= sms:
            splits = max(1, min(MAX_SPLITS, sms // tiles, steps // MIN_STEPS_PER_SPLIT))
    elif not (isinstance(splits, int) and 1 <= splits <= steps):
        raise ValueError(f"{kernel}: split_k must be an int from 1 to {steps} (the {block_k}-wide K steps of "
                         f"K = {k}), found {splits!r}")
    steps_per_split = triton.cdiv(steps, splits)
    splits = triton.cdiv(steps, steps_per_split)  # no empty range
    stage_bytes = block_k * (block_m * x_bytes + block_n * w_bytes)
    num_stages = max(2, min(4, SHARED_BUDGET // stage_bytes))
    num_warps = 8 if block_m * block_n >= 128 * 128 or max_block < 128 else 4
    return GemmTiles(block_m, block_n, block_k, splits, steps_per_split * block_k, num_warps, num_stages)
