"""Text-to-image token embeddings: the projector and the fixed 2-D sin-cos positional term.

- ``TokenProjector``: binary tokens ``[.., C]`` -> backbone embeddings ``[.., hidden]`` through
  ``fc1`` -> GELU (tanh approximation) -> ``fc2`` (keys ``fc1.*``, ``fc2.*`` of ``projector.safetensors``).
- ``t2i_position_table(h, w, hidden, patch_side)``: ``[h·w, hidden]`` float32 in generation (patch-raster) order,
  added both to the backbone's hidden states before the head and to the projected tokens fed back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .patch_order import patch_raster_order

POSITION_TABLE_LEN = 256  # positions 0..255 per axis (4096 pixels / 16)


class TokenProjector(nn.Module):
    def __init__(self, token_channels: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(token_channels, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.fc1(tokens.to(self.fc1.weight.dtype))
        return self.fc2(F.gelu(x, approximate="tanh"))


def sincos_table_1d(dim: int, length: int = POSITION_TABLE_LEN) -> torch.Tensor:
    """``[length, dim]`` float32: ``[sin(p·ω), cos(p·ω)]`` with ``ω_k = 1/10000^(k/(dim/2))``, k < dim/2."""
    omega = torch.arange(dim // 2, dtype=torch.float32)
    omega /= dim / 2.0
    omega = 1.0 / 10000 ** omega
    angles = torch.arange(length, dtype=torch.float32)[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def t2i_position_table(h: int, w: int, hidden: int, patch_side: int) -> torch.Tensor:
    """The 2-D term of grid ``h × w``: entry (row r, column q) is ``[table[q], table[r]]``, reordered to
    patch-raster order with patches of ``patch_side²`` tokens. float32 ``[h·w, hidden]``."""
    if max(h, w) > POSITION_TABLE_LEN:
        raise ValueError(f"token grid {h}x{w} exceeds the {POSITION_TABLE_LEN}-entry position table")
    table = sincos_table_1d(hidden // 2)
    cols = table[:w].view(1, w, -1).expand(h, w, -1)
    rows = table[:h].view(h, 1, -1).expand(h, w, -1)
    grid = torch.cat([cols, rows], dim=-1).reshape(h * w, hidden)
    return grid[patch_raster_order(h, w, patch_side)]
