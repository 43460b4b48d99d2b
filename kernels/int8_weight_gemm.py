"""Weight-only int8 GEMM: ``y[M, N] = x[M, K] @ (Wq[N, K] · scales[N])ᵀ (+ bias[N])``, for GPUs without FP8
(A100, RTX 3090) and any other.

Shapes and dtypes: ``x [M, K]`` float32, bfloat16 or float16 (rows may be strided, channels contiguous); ``Wq [N, K]``
int8, contiguous (``QuantizedWeight.data``, codes -127..127); ``scales [N]`` float32 (one per output channel);
``bias [N]`` any float dtype or None; ``y [M, N]`` in x's dtype (or a given ``out`` of float32/bfloat16/float16, rows
may be strided).

In registers: each ``[BLOCK_N, BLOCK_K]`` int8 weight tile is loaded (one byte per weight, half of bf16's traffic),
converted to x's dtype (exact: |code| <= 127 fits bf16's 8 significant bits), and fed to a tensor-core dot with
float32 accumulation (float32 x: IEEE float32 products, no TF32). The per-channel scale factors out of the K sum and
is applied once per output in float32 after the loop, then the bias, then one rounding to the output dtype. Tiles
and split-K by ``_gemm_tiles.gemm_tiles`` (split ranges each scale their partial sums; ``_split_k`` adds them and
the bias in a fixed order). No atomics: the same bits every run.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bitdance_rt.ops.argument_checks import check_rows, check_tensor
from bitdance_rt.kernels._gemm_tiles import gemm_tiles
from bitdance_rt.kernels._split_k import split_k_reduce
from bitdance_rt.quantization.reference_linear import int8_weight_gemm_reference

REFERENCE = int8_weight_gemm_reference
KERNEL = "int8_weight_gemm"
X_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _int8_weight_gemm_kernel(x_ptr, w_ptr, scale_ptr, bias_ptr, out_ptr, M, N, K, x_row_stride, out_row_stride,
                             k_per_split, split_stride, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr,
                             DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                             BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    k_start = tl.program_id(2) * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    row_ok, col_ok = rows < M, cols < N
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * x_row_stride
    w_rows = w_ptr + cols.to(tl.int64)[:, None] * K
    ks = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        k = k0 + ks
        k_ok = (k < k_end)[None, :]
        x = tl.load(x_rows + k[None, :], mask=row_ok[:, None] & k_ok, other=0.0)
        w = tl.load(w_rows + k[None, :], mask=col_ok[:, None] & k_ok, other=0)
        acc = tl.dot(x, tl.trans(w.to(x_ptr.dtype.element_ty)), acc, input_precision=DOT_PRECISION)
    acc = acc * tl.load(scale_ptr + cols, mask=col_ok, other=0.0)[None, :]
    inside = row_ok[:, None] & col_ok[None, :]
    if SPLIT:  # float32 partials [splits, M, N]; out_ptr is the partial buffer
        offsets = tl.program_id(2).to(tl.int64) * split_stride + rows.to(tl.int64)[:, None] * N + cols[None, :]
        tl.store(out_ptr + offsets, acc, mask=inside)
    else:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + rows.to(tl.int64)[:, None] * out_row_stride + cols[None, :],
                 acc.to(out_ptr.dtype.element_ty), mask=inside)


def int8_weight_gemm(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None,
                     out: torch.Tensor | None = None, split_k: int | None = None) -> torch.Tensor:
    """``x [M, K] @ (weight [N, K] int8 · scales [N])ᵀ + bias`` -> ``[M, N]`` in x's dtype (or into ``out``).
    ``split_k`` forces the number of K ranges (None: the tile rule's choice)."""
    check_tensor(KERNEL, "x", x, shape=(None, None), dtype=X_DTYPES, contiguous=False)
    m, k = x.shape
    device = x.device
    check_rows(KERNEL, "x", x, (m, k), x.dtype, device)
    check_tensor(KERNEL, "weight", weight, shape=(None, k), dtype=torch.int8, device=device)
    n = weight.shape[0]
    check_tensor(KERNEL, "scales", scales, shape=(n,), dtype=torch.float32, device=device)
    if bias is not None:
        check_tensor(KERNEL, "bias", bias, shape=(n,), dtype=X_DTYPES, device=device)
    if out is None:
        out = torch.empty((m, n), dtype=x.dtype, device=device)
    else:
        check_tensor(KERNEL, "out", out, shape=(m, n), dtype=X_DTYPES, device=device, contiguous=False)
        check_rows(KERNEL, "out", out, (m, n), out.dtype, device)
    if m == 0 or n == 0:
        return out
    if k == 0:
        return out.copy_(bias.expand(m, n) if bias is not None else torch.zeros_like(out))
    wide = x.dtype == torch.float32  # IEEE float32 dot on the FMA units: smaller tiles
    tiles = gemm_tiles(m, n, k, block_k=32 if wide else 128, x_bytes=x.element_size(), w_bytes=1, device=device,
                       splits=split_k, max_block=64 if wide else 128, kernel=KERNEL)
    split = tiles.splits > 1
    target = torch.empty((tiles.splits, m, n), dtype=torch.float32, device=device) if split else out
    _int8_weight_gemm_kernel[tiles.grid(m, n)](
        x, weight, scales, bias if bias is not None else scales, target, m, n, k, x.stride(0), out.stride(0),
        tiles.k_per_split, m * n, HAS_BIAS=bias is not None, SPLIT=split,
        DOT_PRECISION="ieee" if wide else None, BLOCK_M=tiles.block_m,
        BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k, num_warps=tiles.num_warps, num_stages=tiles.num_stages)
    if split:
        split_k_reduce(target, bias, out)
    return out
