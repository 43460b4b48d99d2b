"""Inputs of the fused pre-attention tests (Triton in tests/kernels, CUDA in tests/cuda): the case record and the
caches of random garbage whose rows the launch must write are NaN, so both an unwritten row and a write outside
``[lengths[b], lengths[b] + T)`` show."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from kernel_testing import randn


def f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.float64)


@dataclass
class Case:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    q_weight: torch.Tensor
    k_weight: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    lengths: torch.Tensor
    written: torch.Tensor  # bool [B, Hkv, Lmax, D]: the cache elements the launch must write


def garbage_caches(batch: int, kv_heads: int, max_len: int, head_dim: int, length: int, starts: list[int],
                   seed: int, dtype: torch.dtype, device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(k_cache, v_cache, written, lengths)``: caches of random values (seeds ``seed``, ``seed + 1``) whose rows
    ``[starts[b], starts[b] + length)`` are NaN, the mask of those rows, and ``starts`` as device int32 lengths."""
    k_cache = randn(batch, kv_heads, max_len, head_dim, seed=seed, dtype=dtype, device=device)
    v_cache = randn(batch, kv_heads, max_len, head_dim, seed=seed + 1, dtype=dtype, device=device)
    written = torch.zeros(k_cache.shape, dtype=torch.bool, device=device)
    for row, start in enumerate(starts):
        written[row, :, start:start + length] = True
    k_cache[written] = float("nan")
    v_cache[written] = float("nan")
    return k_cache, v_cache, written, torch.tensor(starts, dtype=torch.int32, device=device)
