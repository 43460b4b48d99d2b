"""The head's output map of sigmoid-output models in one elementwise pass: ``out = 2·sigmoid(x) − 1``.

Shapes: ``x, out`` any shape, contiguous, the same (the final linear's output ``[rows, P, C]``). Dtypes: float32,
bfloat16 or float16, alike; arithmetic in float32, one rounding at the store. Replaces a sigmoid, a multiply and a
subtraction (three launches and two temporaries). ``out`` may be ``x`` (in place).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bitdance_rt.ops.argument_checks import check_tensor
from bitdance_rt.reference.head_ops import sigmoid_output_ref

REFERENCE = sigmoid_output_ref
KERNEL = "sigmoid_output"
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BLOCK = 1024


@triton.jit
def _sigmoid_output_kernel(x_ptr, out_ptr, numel, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < numel
    x = tl.load(x_ptr + offs, mask=inside, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, (2.0 / (1.0 + tl.exp(-x)) - 1.0).to(out_ptr.dtype.element_ty), mask=inside)


def sigmoid_output(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``2·sigmoid(x) − 1`` elementwise."""
    check_tensor(KERNEL, "x", x, dtype=FLOAT_DTYPES)
    if out is None:
        out = torch.empty_like(x)
    else:
        check_tensor(KERNEL, "out", out, shape=tuple(x.shape), dtype=x.dtype, device=x.device)
    if x.numel():
        _sigmoid_output_kernel[(triton.cdiv(x.numel(), BLOCK),)](x, out, x.numel(), BLOCK=BLOCK, num_warps=4)
    return out
