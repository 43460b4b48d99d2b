"""Dense masked attention with grouped-query heads, and the dense masks of a cached decode block and of a padded
block-causal prefill, built from per-row lengths.

Shapes: queries ``[B, Hq, Tq, D]``, keys and values ``[B, Hkv, L, D]`` with ``Hq = group · Hkv`` (query head ``h``
reads KV head ``h // group``), ``allowed`` bool broadcastable to ``[B, 1, Tq, L]`` (``True`` = may attend).
A query row that may attend to nothing gets output 0. Any floating dtype, float64 included.
"""

from __future__ import annotations

import torch

from .masks import block_causal_mask, block_rows


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor,
                     scale: float) -> torch.Tensor:
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scores = (q @ k.transpose(-1, -2) * scale).masked_fill(~allowed, float("-inf"))
    weights = torch.where(allowed.any(dim=-1, keepdim=True), torch.softmax(scores, dim=-1), 0.0)
    return weights @ v


def decode_allowed(lengths: torch.Tensor, block: int, max_len: int) -> torch.Tensor:
    """``[B, 1, block, max_len]``: the ``block`` queries of row b, at positions ``[lengths[b], lengths[b] + block)``,
    see every cached key before them and their own block (rows of the model's block-causal mask)."""
    rows = []
    for length in lengths.tolist():
        end = length + block
        seen = block_rows(block_causal_mask(end, length, block), length, block)
        rows.append(torch.nn.functional.pad(seen, (0, max_len - end), value=False))
    return torch.stack(rows)[:, None].to(lengths.device)


def prefill_allowed(lengths: torch.Tensor, causal_lens: torch.Tensor, block: int, total: int) -> torch.Tensor:
    """``[B, 1, total, total]``: row b has ``lengths[b]`` valid positions; those before ``causal_lens[b]`` are
    causal, later ones form blocks of ``block`` starting at ``causal_lens[b]``; padding queries and keys
    (positions ``>= lengths[b]``) are masked out entirely."""
    rows = []
    for length, causal_len in zip(lengths.tolist(), causal_lens.tolist()):
        whole = causal_len + -(-max(total - causal_len, 0) // block) * block  # rounded up to whole blocks
        mask = block_causal_mask(whole, causal_len, block)[:total, :total]
        valid = torch.arange(total) < length
        rows.append(mask & valid[:, None] & valid[None, :])
    return torch.stack(rows)[:, None].to(lengths.device)
