"""A static KV cache: allocated once per continuous batch (``SlotBatch``) and reused by the requests that join it.

Per layer, keys and values ``[B, Hkv, Lmax, D]``; ``lengths`` is a device int32 ``[B]`` holding how many positions
each row has cached, so rows of different prompt lengths share a batch and one CUDA graph serves every AR step
(the kernels read the lengths on the device). Nothing grows or is concatenated per step. ``rows(start, stop)`` is
a cache over a contiguous range of rows sharing the storage (a joining request's prefill writes its own rows of a
continuous batch through it).
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

    def rows(self, start: int, stop: int) -> "StaticKVCache":
        """Rows ``start:stop`` as a cache of their own: views of this cache's keys, values and lengths."""
        if not 0 <= start < stop <= self.batch:
            raise ValueError(f"StaticKVCache.rows: rows {start}:{stop} are outside the cache's {self.batch} rows")
        view = object.__new__(StaticKVCache)
        view.keys = [k[start:stop] for k in self.keys]
        view.values = [v[start:stop] for v in self.values]
        view.lengths = self.lengths[start:stop]
        view.batch, view.max_len = stop - start, self.max_len
        return view

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)
