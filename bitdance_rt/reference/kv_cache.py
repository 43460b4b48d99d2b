"""A preallocated key/value cache for the reference backbones.

Shapes: per layer, keys and values of ``[batch, kv_heads, max_len, head_dim]``. ``length`` is the number of
positions already written (the same for every row in the reference path). A forward pass over ``T`` new
positions writes rows ``[length, length + T)`` of every layer through :meth:`write`, then calls
:meth:`advance` once.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, num_layers: int, batch: int, kv_heads: int, max_len: int, head_dim: int,
                 device: torch.device | str, dtype: torch.dtype):
        shape = (batch, kv_heads, max_len, head_dim)
        self.keys = [torch.empty(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.values = [torch.empty(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.max_len = max_len
        self.length = 0

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k, v`` of shape ``[batch, kv_heads, T, head_dim]`` after the cached positions.

        Returns views of all keys and values up to and including the new ones.
        """
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise RuntimeError(f"KV cache overflow: {end} positions needed, {self.max_len} allocated")
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, n: int) -> None:
        self.length += n
