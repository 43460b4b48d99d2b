"""Weight-only int8 GEMM: ``y[M, N] = x[M, K] @ (Wq[N, K] · scales[N])ᵀ (+ bias[N])``, for GPUs without FP8
(A100, RTX 3090) and any other.

Shapes and dtypes: ``x [M, K]`` float32, bfloat16 or float16 (rows may be strided, channels contiguous); ``Wq [N, K]``
int8, contiguous (``QuantizedWeight.data``, codes -127..127); ``scales [N]`` float32 (one per output channel);
``bias [N]`` any float dtype or None; ``y [M, N]`` in x's dtype (or a given ``out`` of float32/bfloat16/float16, rows
may be strided).

In registers: each ``[BLOCK_N, BLOCK_K]`` int8 weight tile is loaded (one byte per weight, half of bf16's traffic),
converted to x's dtype (exact: |code| <= 127 fits bf16's 8 significant bits), and fed to a tensor-core dot with
float32 accumulation (float32 x: IEEE float32 products, no TF32). The per-channel scale factors out of the K sum and
is applied once per output in float32 after the loop, then the epilogue (``_gemm_epilogue``: bias, SwiGLU with a
second accumulator over the up rows, or the gated residual), then one rounding to the output dtype. Tiles, split-K
and the shared checks by ``_gemm_launch`` (split ranges each scale their partial sums; ``_split_k`` adds them in a
fixed order and runs the epilogue). No atomics: the same bits every run.
"""

from __future__ import annotations

import torch

from bitdance_rt.ops.argument_checks import check_rows, check_tensor
from bitdance_rt.kernels._weight_gemm import weight_gemm_kernel
from bitdance_rt.kernels._gemm_launch import prepare_gemm
from bitdance_rt.quantization.reference_linear import int8_weight_gemm_reference

REFERENCE = int8_weight_gemm_reference
KERNEL = "int8_weight_gemm"
X_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def int8_weight_gemm(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None,
                     out: torch.Tensor | None = None, split_k: int | None = None, *, epilogue: str = "bias",
                     gate: torch.Tensor | None = None) -> torch.Tensor:
    """``x [M, K] @ (weight [N, K] int8 · scales [N])ᵀ + bias`` -> ``[M, N]`` in x's dtype (or into ``out``), then
    the epilogue (``_gemm_epilogue``: ``"swiglu"``: weight ``[2H, K]`` -> ``[M, H]``; ``"gated_residual"``:
    ``out = x_res + gate·(...)`` in place into ``out``). ``split_k`` forces the number of K ranges (None: the tile
    rule's choice)."""
    check_tensor(KERNEL, "x", x, shape=(None, None), dtype=X_DTYPES, contiguous=False)
    m, k = x.shape
    device = x.device
    check_rows(KERNEL, "x", x, (m, k), x.dtype, device)
    check_tensor(KERNEL, "weight", weight, shape=(None, k), dtype=torch.int8, device=device)
    n = weight.shape[0]
    check_tensor(KERNEL, "scales", scales, shape=(n,), dtype=torch.float32, device=device)
    wide = x.dtype == torch.float32  # IEEE float32 dot on the FMA units: smaller tiles
    call = prepare_gemm(KERNEL, m=m, n_weight=n, k=k, device=device, bias=bias, bias_dtypes=X_DTYPES, out=out,
                        out_dtype=x.dtype, epilogue=epilogue, gate=gate, split_k=split_k,
                        block_k=32 if wide else 128, x_bytes=x.element_size(), w_bytes=1,
                        max_block=64 if wide else 128)
    if call.launch:
        weight_gemm_kernel[call.grid](x, weight, scales, x.stride(0), *call.args, SCALED=True,
                                      DOT_PRECISION="ieee" if wide else None, **call.meta)
    return call.finish()
