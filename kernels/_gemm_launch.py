"""The launch scaffolding our GEMM launchers share (``float_gemm``, ``int8_weight_gemm``, ``fp8_gemm``): the checks
of bias, output and epilogue arguments, the output buffer, tiles and split-K (``_gemm_tiles``), the float32 partial
buffer, the kernel arguments every GEMM kernel ends with, and the split-K reduce (``_split_k``) or the empty cases.

A launcher checks its own operands (x or the fp8 codes, the weight and its scales), then calls ``prepare_gemm``;
if ``call.launch`` is true it launches its kernel on ``call.grid`` with its own arguments followed by
``*call.args`` and ``**call.meta``, and returns ``call.finish()``. The kernel's signature ends with
``partial_ptr, bias_ptr, out_ptr, gate_ptr, M, N, K, out_row_stride, gate_row_stride, k_per_split, partial_width,
split_stride`` and takes the constexprs ``HAS_BIAS, EPILOGUE, SPLIT, BLOCK_M, BLOCK_N, BLOCK_K``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from bitdance_rt.kernels._gemm_epilogue import EPILOGUES
from bitdance_rt.kernels._gemm_tiles import GemmTiles, gemm_tiles
from bitdance_rt.kernels._split_k import split_k_reduce
from bitdance_rt.ops.argument_checks import check_rows, check_tensor

OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
SWIGLU_MAX_BLOCK_N = 64  # two accumulators per program with SwiGLU: half the columns keep them in registers


@dataclass
class GemmCall:
    out: torch.Tensor
    bias: torch.Tensor | None
    gate: torch.Tensor | None
    epilogue: str
    tiles: GemmTiles | None
    partials: torch.Tensor | None   # [S, M, W] float32 when split (or K = 0), else None
    launch: bool                    # whether the launcher runs its kernel
    grid: tuple[int, int, int] = (0, 0, 0)
    args: tuple = ()
    meta: dict = dataclasses.field(default_factory=dict)

    def finish(self) -> torch.Tensor:
        if self.partials is not None:
            split_k_reduce(self.partials, self.bias, self.out, epilogue=self.epilogue, gate=self.gate)
        return self.out


def prepare_gemm(kernel: str, *, m: int, n_weight: int, k: int, device: torch.device, bias: torch.Tensor | None,
                 bias_dtypes: tuple[torch.dtype, ...], out: torch.Tensor | None, out_dtype: torch.dtype,
                 epilogue: str, gate: torch.Tensor | None, split_k: int | None, block_k: int, x_bytes: int,
                 w_bytes: int, max_block: int = 128, interpreter_splits: bool = True) -> GemmCall:
    """Check the shared arguments of ``y = epilogue(x [M, K] @ W [n_weight, K]ᵀ)`` and plan the launch.
    ``interpreter_splits``: whether the split rule also applies off CUDA (False: one K range unless forced)."""
    if epilogue not in EPILOGUES:
        raise ValueError(f"{kernel}: epilogue must be one of {tuple(EPILOGUES)}, found {epilogue!r}")
    n = n_weight
    if epilogue == "swiglu":
        if n_weight % 2:
            raise ValueError(f"{kernel}: the SwiGLU epilogue needs a weight of 2H rows (gate rows, then up rows), "
                             f"found {n_weight} rows")
        n = n_weight // 2
    if bias is not None:
        check_tensor(kernel, "bias", bias, shape=(n_weight,), dtype=bias_dtypes, device=device)
    if epilogue == "gated_residual":
        if out is None or gate is None:
            raise ValueError(f"{kernel}: the gated_residual epilogue updates the residual stream in place: pass it as "
                             f"out=x [{m}, {n}] and the gate as gate [{m}, {n}]")
    elif gate is not None:
        raise ValueError(f"{kernel}: gate is used by the gated_residual epilogue only, not by {epilogue!r}")
    if out is None:
        if out_dtype not in OUT_DTYPES:
            raise ValueError(f"{kernel}: out_dtype must be one of {OUT_DTYPES}, found {out_dtype}")
        out = torch.empty((m, n), dtype=out_dtype, device=device)
    else:
        check_tensor(kernel, "out", out, shape=(m, n), dtype=OUT_DTYPES, device=device, contiguous=False)
        check_rows(kernel, "out", out, (m, n), out.dtype, device)
    if gate is not None:
        check_tensor(kernel, "gate", gate, shape=(m, n), dtype=out.dtype, device=device, contiguous=False)
        check_rows(kernel, "gate", gate, (m, n), out.dtype, device)
    width = 2 * n if epilogue == "swiglu" else n
    call = GemmCall(out, bias, gate, epilogue, None, None, launch=False)
    if m == 0 or n == 0:
        return call
    if k == 0:  # no products: the epilogue of zero sums
        call.partials = torch.zeros((1, m, width), dtype=torch.float32, device=device)
        return call
    if split_k is None and not interpreter_splits and device.type != "cuda":
        split_k = 1
    tiles = gemm_tiles(m, n, k, block_k=block_k, x_bytes=x_bytes, w_bytes=w_bytes, device=device, splits=split_k,
                       max_block=max_block, kernel=kernel)
    if epilogue == "swiglu" and tiles.block_n > SWIGLU_MAX_BLOCK_N:
        tiles = dataclasses.replace(tiles, block_n=SWIGLU_MAX_BLOCK_N,
                                    num_warps=8 if tiles.block_m * SWIGLU_MAX_BLOCK_N * 2 >= 128 * 128 else 4)
    split = tiles.splits > 1
    call.tiles, call.launch = tiles, True
    call.partials = torch.empty((tiles.splits, m, width), dtype=torch.float32, device=device) if split else None
    call.grid = tiles.grid(m, n)
    call.args = (out if call.partials is None else call.partials, out if bias is None else bias, out,
                 out if gate is None else gate, m, n, k, out.stride(0), 0 if gate is None else gate.stride(0),
                 tiles.k_per_split, width, m * width)
    call.meta = dict(HAS_BIAS=bias is not None, EPILOGUE=EPILOGUES[epilogue], SPLIT=split, BLOCK_M=tiles.block_m,
                     BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k, num_warps=tiles.num_warps,
                     num_stages=tiles.num_stages)
    return call
