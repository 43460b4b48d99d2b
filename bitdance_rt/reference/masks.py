"""Block-causal attention masks of the two BitDance families, as explicit dense matrices.

Both families use one pattern over a sequence of ``total`` positions: positions ``< causal_len`` are causal;
from ``causal_len`` on, positions are grouped in blocks of P that attend to everything before the block and
bidirectionally within it. ``True`` means "may attend".

- Text-to-image: ``causal_len = prompt_len + 2`` (the prompt, ``<|vision_start|>``, ``<|res_H|>``); the first
  block is ``<|res_W|>`` and the P−1 query tokens.
- Class-conditional: ``causal_len = 63``; the first block is the last class token and the P−1 query tokens.
"""

from __future__ import annotations

import torch

from ..errors import InvalidRequestError

C2I_CAUSAL_LEN = 63


def block_causal_mask(total: int, causal_len: int, block: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Dense ``[total, total]`` bool mask; ``(total − causal_len)`` must be a multiple of ``block``."""
    if block < 1 or causal_len < 0 or (total - causal_len) % block:
        raise InvalidRequestError(f"block_causal_mask: total={total}, causal_len={causal_len} and block={block} "
                         "do not split the sequence into whole blocks")
    pos = torch.arange(total, device=device)
    group = torch.where(pos < causal_len, pos, causal_len + (pos - causal_len) // block * block)
    # a position may see every key up to the end of its own group
    group_end = torch.where(pos < causal_len, pos, group + block - 1)
    return pos[None, :] <= group_end[:, None]


def t2i_causal_len(prompt_len: int) -> int:
    """Causal part of a T2I sequence whose prompt (chat template included) has ``prompt_len`` tokens."""
    return prompt_len + 2


def block_rows(mask: torch.Tensor, start: int, length: int) -> torch.Tensor:
    """Rows ``[start, start + length)`` of a dense mask, cut to keys ``[0, start + length)``: the mask of one
    cached step, shape ``[length, start + length]``."""
    return mask[start:start + length, :start + length]
