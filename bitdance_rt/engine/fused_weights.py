"""Fusing linears that read the same input into one GEMM without keeping two copies of their weights."""

from __future__ import annotations

import torch
from torch import nn


def share_storage(linears: list[nn.Linear], weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    """Point each linear's parameters at its rows of the concatenated ``weight`` (and ``bias``), so the modules
    (the reference path) and the fused GEMM (the engine) read one copy."""
    start = 0
    for lin in linears:
        rows = lin.weight.shape[0]
        lin.weight = nn.Parameter(weight[start:start + rows], requires_grad=False)
        if bias is not None:
            lin.bias = nn.Parameter(bias[start:start + rows], requires_grad=False)
        start += rows


def fuse_linears(linears: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Concatenate the linears' weights (and biases, when every one has one) along the output dimension and make
    the modules views of the result. Returns the fused ``(weight, bias)``."""
    with torch.no_grad():
        weight = torch.cat([lin.weight for lin in linears], dim=0)
        has_bias = all(lin.bias is not None for lin in linears)
        bias = torch.cat([lin.bias for lin in linears], dim=0) if has_bias else None
    share_storage(linears, weight, bias)
    return weight, bias
