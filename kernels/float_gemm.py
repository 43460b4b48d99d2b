"""Float-weight GEMM with split-K and our epilogues: ``y[M, N] = epilogue(x[M, K] @ W[N, K]ᵀ)`` for bf16, fp16 or
float32 weights, the Triton alternative to cuBLAS (``F.linear``) where the benchmark measured it faster
(``bench/test_bench_float_gemm.py``, ``bitdance_rt/ops/gemm_choice.py``), and the way to fuse SwiGLU into the
up-projection and the gated residual into the GEMM that feeds it.

Shapes and dtypes: ``x [M, K]`` and ``W [N, K]`` of one dtype (float32, bfloat16 or float16; x's rows may be strided,
W contiguous); ``bias`` ``[N]`` (``[2H]`` for SwiGLU) any float dtype or None; ``out [M, N]`` in x's dtype or a given
float ``out`` (rows may be strided). Epilogues (``_gemm_epilogue``): ``"bias"``; ``"swiglu"`` (W ``[2H, K]``, gate
rows then up rows -> ``[M, H] = silu(x·W_gateᵀ + b_gate) · (x·W_upᵀ + b_up)``, two accumulators in one program);
``"gated_residual"`` (``out`` is the residual x ``[M, N]``, updated in place: ``x += gate · (x_in·Wᵀ + b)``; x_in
must not share memory with x: other programs still read it).

Arithmetic: ``tl.dot`` of the tiles with float32 accumulation (float32 operands: IEEE products, no TF32), the
epilogue in float32, one rounding at the store. Tiles and split-K by ``_gemm_launch`` / ``_gemm_tiles`` (K cut into
ranges when the output tiles leave SMs idle; float32 partials reduced in order by ``_split_k``, which runs the
epilogue; no atomics: the same bits every run). Off CUDA (the interpreter) one K range unless ``split_k`` forces more.
"""

from __future__ import annotations

import torch

from bitdance_rt.kernels._weight_gemm import weight_gemm_kernel
from bitdance_rt.kernels._gemm_launch import OUT_DTYPES, prepare_gemm
from bitdance_rt.ops.argument_checks import check_rows, check_tensor

KERNEL = "float_gemm"
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def float_gemm_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` (the epilogues' references: ``reference.head_ops.swiglu_ref`` / ``gated_residual_ref``)."""
    return torch.nn.functional.linear(x, weight, bias)


REFERENCE = float_gemm_reference


def float_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
               out: torch.Tensor | None = None, split_k: int | None = None, *, epilogue: str = "bias",
               gate: torch.Tensor | None = None) -> torch.Tensor:
    """``epilogue(x [M, K] @ weight [N, K]ᵀ + bias)`` -> ``[M, N]`` (``[M, N/2]`` for SwiGLU) in x's dtype or into
    ``out`` (for ``"gated_residual"``: ``out`` is the residual stream, updated in place). ``split_k`` forces the
    number of K ranges (None: the tile rule's choice on CUDA, 1 elsewhere)."""
    check_tensor(KERNEL, "x", x, shape=(None, None), dtype=FLOAT_DTYPES, contiguous=False)
    m, k = x.shape
    device = x.device
    check_rows(KERNEL, "x", x, (m, k), x.dtype, device)
    check_tensor(KERNEL, "weight", weight, shape=(None, k), dtype=x.dtype, device=device)
    wide = x.dtype == torch.float32  # IEEE float32 dot on the FMA units: smaller tiles
    call = prepare_gemm(KERNEL, m=m, n_weight=weight.shape[0], k=k, device=device, bias=bias, bias_dtypes=OUT_DTYPES,
                        out=out, out_dtype=x.dtype, epilogue=epilogue, gate=gate, split_k=split_k,
                        block_k=32 if wide else 64, x_bytes=x.element_size(), w_bytes=weight.element_size(),
                        max_block=64 if wide else 128, interpreter_splits=False)
    if call.launch:
        weight_gemm_kernel[call.grid](x, weight, weight, x.stride(0), *call.args, SCALED=False,
                                      DOT_PRECISION="ieee" if wide else None, **call.meta)
    return call.finish()
