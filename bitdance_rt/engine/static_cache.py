"""A static KV cache: allocated once per (batch, max length) bucket and reused across requests.

Per layer, keys and values ``[B, Hkv, Lmax, D]``; ``lengths`` is a device int32 ``[B]`` holding how many positions
each row has cached, so rows of different prompt lengths share a batch and one CUDA graph serves every AR step
(the kernels read the lengths on the device). Nothing grows or is concatenated per step.
"""

from __future__ import annotations

import torch


class StaticKVCache:
    def __init__(self, num_layers: int, batch: int, kv_heads: int, max_len: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype):
        shape = (batch, kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.lengths = torch.zeros(batch, device=device, dtype=torch.int32)
        self.batch, self.max_len = batch, max_len


class CachePool:
    """Caches by ``(batch, max_len)`` bucket, created on first use and handed out again for later requests."""

    def __init__(self, num_layers: int, kv_heads: int, head_dim: int, device: torch.device, dtype: torch.dtype):
        self._shape = (num_layers, kv_heads, head_dim)
        self._device, self._dtype = device, dtype
        self._caches: dict[tuple[int, int], StaticKVCache] = {}

    def get(self, batch: int, max_len: int) -> StaticKVCache:
        key = (batch, max_len)
        if key not in self._caches:
            layers, kv_heads, head_dim = self._shape
            self._caches[key] = StaticKVCache(layers, batch, kv_heads, max_len, head_dim, self._device, self._dtype)
        return self._caches[key]
