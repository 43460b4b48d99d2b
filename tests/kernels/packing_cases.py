"""The literal bit-order case every packing implementation (Triton, CUDA, reference) is checked on: bit c of word w
is token ``32·w + c > 0``."""

from __future__ import annotations

import torch

INT32_MIN = -(2 ** 31)


def bit_order_case(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens [6, 64] of ±1, their int32 words [6, 2])``: channel 0 -> 1, channel 31 -> the sign bit,
    {0, 1, 4} -> 19, all +1 -> -1, all −1 -> 0; a second word starts at channel 32."""
    tokens = -torch.ones(6, 64, device=device)
    tokens[0, 0] = 1.0
    tokens[1, 31] = 1.0
    tokens[2, [0, 1, 4]] = 1.0
    tokens[3] = 1.0
    tokens[5, [32, 35, 63]] = 1.0
    words = torch.tensor([[1, 0], [INT32_MIN, 0], [19, 0], [-1, -1], [0, 0], [0, 9 + INT32_MIN]],
                         dtype=torch.int32, device=device)
    return tokens, words
