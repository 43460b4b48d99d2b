"""Our float GEMM (``kernels.float_gemm``, bf16, with its fused epilogues) against cuBLAS (``F.linear``, plus the
separate ``swiglu`` / ``gated_residual`` kernel where the epilogue is not a bias) at the 14B model's shapes, and the
entries of ``bitdance_rt/ops/gemm_choice.py``'s measured-choice table.

Rows: the 14B text-to-image model's float linears with the epilogue the engine runs them with: backbone q/k/v
(7,168 × 5,120, bias), o_proj (5,120 × 5,120), gate/up (34,816 × 5,120, SwiGLU), down (5,120 × 17,408); head wqkv
(15,360 × 5,120), wo (5,120 × 5,120, gated residual), w1 (15,360 × 5,120, SwiGLU), w2 (5,120 × 7,680, gated
residual), the fused adaLN linear ((2·6 + 2)·5,120 × 5,120). M = 128, 256, 512, 1,024, 2,048 rows (the decode
block of one guided image is 128; where N = 5,120 the 128-row tiles leave most of the SMs idle without split-K).

Each row times, inside CUDA graphs (``floors.time_graphed``), cuBLAS and ours with every split count from 1 to 8 that
K allows, plus the tile rule's choice; ``extra_info`` holds them all (``ours_split<S>_s``, ``cublas_s``), the best
split and whether ours won. At the end the module prints the table and the ``MEASURED`` entries (ours faster than
cuBLAS by more than ``MARGIN``) to paste into ``gemm_choice.py``:

    python -m pytest bench/test_bench_float_gemm.py -q -s

Skipped without CUDA (bench/conftest.py).
"""

from __future__ import annotations

import floors
import pytest
import torch
import torch.nn.functional as F
from model_shapes import QWEN3_14B, T2I_HEAD_ADALN
from shapes import T2I_14B

HIDDEN, FFN = T2I_14B["hidden"], QWEN3_14B["intermediate"]
QKV = (T2I_14B["q_heads"] + 2 * T2I_14B["kv_heads"]) * T2I_14B["head_dim"]
HEAD, HEAD_FFN = T2I_14B["head_width"], int(1.5 * T2I_14B["head_width"])
ADALN = (T2I_HEAD_ADALN * 6 + 2) * HEAD
LINEARS = {  # name: (N = weight rows, K, epilogue, bias)
    "bb_qkv": (QKV, HIDDEN, "bias", False), "bb_o": (HIDDEN, HIDDEN, "bias", False),
    "bb_gate_up": (2 * FFN, HIDDEN, "swiglu", False), "bb_down": (HIDDEN, FFN, "bias", False),
    "head_wqkv": (3 * HEAD, HEAD, "bias", True), "head_wo": (HEAD, HEAD, "gated_residual", True),
    "head_w1": (2 * HEAD_FFN, HEAD, "swiglu", True), "head_w2": (HEAD, HEAD_FFN, "gated_residual", True),
    "head_adaln": (ADALN, HEAD, "bias", True),
}
ROWS = (128, 256, 512, 1024, 2048)
SPLITS = (1, 2, 3, 4, 6, 8)
MARGIN = 0.97  # ours must take < 97 % of cuBLAS's time to be listed
CASES = [pytest.param(name, m, id=f"{name}-M{m}") for name in LINEARS for m in ROWS]
RESULTS: list[dict] = []


@pytest.fixture(scope="module", autouse=True)
def table():
    yield
    if not RESULTS:
        return
    gpu = torch.cuda.get_device_name()
    print(f"\nfloat GEMM, bf16, {gpu}: graphed µs (cuBLAS includes the separate epilogue kernel)")
    print(f"{'linear':<12}{'epilogue':>16}{'M':>6}{'cuBLAS':>9}{'rule':>9}{'best':>9}{'split':>6}  ours wins")
    entries: dict[tuple, list] = {}
    for r in RESULTS:
        print(f"{r['name']:<12}{r['epilogue']:>16}{r['m']:>6}{1e6 * r['cublas_s']:>9.1f}{1e6 * r['rule_s']:>9.1f}"
              f"{1e6 * r['best_s']:>9.1f}{r['best_split']:>6}  {'yes' if r['wins'] else 'no'}")
        if r["wins"]:
            entries.setdefault((gpu, "bfloat16", r["epilogue"], r["n"], r["k"]), []).append((r["m"], r["best_split"]))
    print("\nMEASURED entries for bitdance_rt/ops/gemm_choice.py:")
    print("MEASURED = {" + "".join(f"\n    {key!r}: {tuple(v)!r}," for key, v in entries.items()) + "\n}")


def _operands(name: str, m: int):
    n, k, epilogue, with_bias = LINEARS[name]
    x = floors.cuda_randn(m, k, seed=1)
    w = floors.cuda_randn(n, k, seed=2, scale=k ** -0.5)
    b = floors.cuda_randn(n, seed=3, scale=0.02) if with_bias else None
    out_n = n // 2 if epilogue == "swiglu" else n
    residual = floors.cuda_randn(m, out_n, seed=4)
    gate = floors.cuda_randn(m, 3 * out_n, seed=5, scale=0.01)[:, out_n:2 * out_n]  # a strided adaLN chunk
    return x, w, b, residual, gate, out_n


@pytest.mark.parametrize("name,m", CASES)
def test_bench_float_gemm(benchmark, name, m):
    from bitdance_rt.kernels.float_gemm import float_gemm
    from bitdance_rt.kernels.gated_residual import gated_residual
    from bitdance_rt.kernels.swiglu import swiglu
    n, k, epilogue, _ = LINEARS[name]
    x, w, b, residual, gate, out_n = _operands(name, m)
    out = residual if epilogue == "gated_residual" else torch.empty(m, out_n, dtype=x.dtype, device="cuda")
    fused_gate = gate if epilogue == "gated_residual" else None

    def ours(splits):
        return lambda: float_gemm(x, w, b, out=out, split_k=splits, epilogue=epilogue, gate=fused_gate)

    if epilogue == "swiglu":
        def cublas():
            return swiglu(F.linear(x, w, b), out=out)
    elif epilogue == "gated_residual":
        def cublas():
            return gated_residual(residual, F.linear(x, w, b), gate, out=residual)
    else:
        def cublas():
            return torch.mm(x, w.t(), out=out) if b is None else torch.addmm(b, x, w.t(), out=out)
    steps = -(-k // 64)
    times = {s: floors.time_graphed(ours(s))[0] for s in SPLITS if s <= steps}
    best_split = min(times, key=times.get)
    cublas_s = floors.time_graphed(cublas)[0]
    rule_s = floors.time_graphed(ours(None))[0]
    row = {"name": name, "epilogue": epilogue, "m": m, "n": n, "k": k, "cublas_s": cublas_s, "rule_s": rule_s,
           "best_s": times[best_split], "best_split": best_split, "wins": times[best_split] < MARGIN * cublas_s}
    RESULTS.append(row)
    benchmark.extra_info.update({f"ours_split{s}_s": t for s, t in times.items()})
    benchmark.extra_info.update({"best_split": best_split, "wins": row["wins"], "ours_rule_s": rule_s})
    bytes_moved = 2 * (n * k + m * k + m * out_n * (3 if epilogue == "gated_residual" else 1))
    floors.record_row(benchmark, ours(best_split), {"cublas": cublas}, bytes_moved=bytes_moved, flops=2 * m * n * k)
