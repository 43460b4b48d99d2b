"""The CUDA extension's fused pre-attention ``qk_norm_rope_append`` (``bitdance_rt.cuda_ops.pre_attention``) against
the float64 PyTorch reference and the Triton kernel (``kernels/pre_attention.py``), CUDA device only.

Every case: q, k, v as strided views of one fused qkv projection ``[B, T, (Hq + 2·Hkv)·D]`` (as the engine passes
them) or contiguous tensors, ragged per-row lengths, caches of random garbage except the rows the launch must
write, which are NaN; q_out NaN-poisoned. After the launch: q and the written K rows within tolerance of the
reference, V rows equal to v bit for bit, every other cache element bit-identical to its garbage (the kernel
writes exactly ``[lengths[b], lengths[b] + T)``); the same against the Triton kernel on copies of the inputs.
Tolerances are those of tests/kernels/test_pre_attention.py: relative error ``||out − ref|| / ||ref||`` below 1e-5
in float32 and 1e-2 in bfloat16 (also used for float16), and in bfloat16 at least 99% of the elements equal to the
bf16 reference (which mirrors the kernel's roundings) bit for bit.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "kernels"))  # kernel_testing's helpers
from kernel_testing import assert_close, poisoned  # noqa: E402
from pre_attention_cases import Case, f64, garbage_caches  # noqa: E402

from bitdance_rt.cuda_ops import pre_attention as cuda_pre_attention  # noqa: E402
from bitdance_rt.kernels import pre_attention as triton_pre_attention  # noqa: E402
from bitdance_rt.reference.pre_attention import qk_norm_rope_append_reference  # noqa: E402
from bitdance_rt.reference.rope import rotate_half_tables  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA kernels need a CUDA device")

DEVICE = torch.device("cuda")
THETA = 1e6  # Qwen3's rope_theta
EPS = 1e-6
FLOAT32_TOL = 1e-5
HALF_TOL = 1e-2  # bfloat16 and float16
BITWISE_SHARE = 0.99  # bf16: share of elements equal to the bf16 reference
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16"),
          pytest.param(torch.float16, id="fp16")]


def tolerance(dtype: torch.dtype) -> float:
    return FLOAT32_TOL if dtype == torch.float32 else HALF_TOL


def randn(*shape: int, seed: int, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(DEVICE, dtype)


def op_args(case: Case) -> tuple:
    """The launcher's positional arguments for ``case``."""
    return (case.q, case.k, case.v, case.q_weight, case.k_weight, EPS, case.cos, case.sin, case.k_cache,
            case.v_cache, case.lengths)


def make_case(batch: int, length: int, q_heads: int, kv_heads: int, head_dim: int, starts: list[int], seed: int,
              dtype: torch.dtype, fused: bool = True, misaligned: bool = False) -> Case:
    """Inputs with offsets (so the norm matters); caches of garbage whose rows to be written are NaN.
    ``misaligned``: the qkv projection starts one element past a 16-byte boundary (the kernel's scalar path)."""
    width = (q_heads + 2 * kv_heads) * head_dim
    flat = randn(batch * length * width + 1, seed=seed, dtype=dtype, scale=2.0)
    qkv = (flat[1:] if misaligned else flat[:-1]).view(batch, length, -1, head_dim)
    qkv[:, :, :q_heads] += 0.5
    qkv[:, :, q_heads:q_heads + kv_heads] -= 0.5
    q, k, v = qkv[:, :, :q_heads], qkv[:, :, q_heads:q_heads + kv_heads], qkv[:, :, q_heads + kv_heads:]
    if not fused:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    q_weight = 1.0 + randn(head_dim, seed=seed + 1, dtype=dtype, scale=0.3)
    k_weight = 1.0 + randn(head_dim, seed=seed + 2, dtype=dtype, scale=0.3)
    cos, sin = rotate_half_tables(torch.arange(max(starts) + length + 7), head_dim, THETA)
    k_cache, v_cache, written, lengths = garbage_caches(batch, kv_heads, max(starts) + length + 5, head_dim, length,
                                                        starts, seed + 3, dtype, DEVICE)
    return Case(q, k, v, q_weight, k_weight, cos.to(DEVICE), sin.to(DEVICE), k_cache, v_cache, lengths, written)


def with_fresh_caches(case: Case, k_cache: torch.Tensor, v_cache: torch.Tensor) -> Case:
    return replace(case, k_cache=k_cache.clone(), v_cache=v_cache.clone())


def check(case: Case, dtype: torch.dtype) -> None:
    """Launch the CUDA op on ``case`` with a poisoned q_out; check it against the reference and against Triton."""
    garbage_k, garbage_v = case.k_cache.clone(), case.v_cache.clone()
    batch, length, q_heads, head_dim = case.q.shape
    q_out = poisoned(batch, q_heads, length, head_dim, dtype=dtype, device=DEVICE)
    assert cuda_pre_attention.qk_norm_rope_append(*op_args(case), q_out=q_out) is q_out

    ref_k, ref_v = f64(garbage_k), f64(garbage_v)
    ref_q = qk_norm_rope_append_reference(f64(case.q), f64(case.k), f64(case.v), f64(case.q_weight),
                                          f64(case.k_weight), EPS, case.cos.cpu(), case.sin.cpu(), ref_k, ref_v,
                                          case.lengths.cpu())
    tol, written = tolerance(dtype), case.written
    assert_close(q_out, ref_q, tol)
    assert_close(case.k_cache[written], ref_k[written.cpu()], tol)
    for row, start in enumerate(case.lengths.tolist()):  # V is a copy
        assert torch.equal(case.v_cache[row, :, start:start + length], case.v[row].transpose(0, 1))
    assert torch.equal(case.k_cache[~written], garbage_k[~written])
    assert torch.equal(case.v_cache[~written], garbage_v[~written])

    triton_case = with_fresh_caches(case, garbage_k, garbage_v)
    triton_q = triton_pre_attention.qk_norm_rope_append(*op_args(triton_case))
    assert_close(q_out, triton_q, tol)
    assert_close(case.k_cache[written], triton_case.k_cache[written], tol)
    assert torch.equal(case.v_cache, triton_case.v_cache)

    if dtype == torch.bfloat16:  # the reference's roundings are mirrored: nearly bitwise equal to it in bf16
        same_case = with_fresh_caches(case, garbage_k, garbage_v)
        same_q = qk_norm_rope_append_reference(*op_args(same_case))
        assert (q_out == same_q).float().mean().item() >= BITWISE_SHARE
        assert (case.k_cache[written] == same_case.k_cache[written]).float().mean().item() >= BITWISE_SHARE


# decode blocks T in {1, 4, 16, 64} and a prefill; head dims 64 and 128; GQA 10 query heads on 2 KV heads
SHAPES = [  # (T, D, starts per row)
    pytest.param(1, 64, [0, 9], id="T1-D64"),
    pytest.param(4, 128, [13, 2], id="T4-D128"),
    pytest.param(16, 64, [5, 40], id="T16-D64"),
    pytest.param(64, 128, [31, 0], id="T64-D128"),
    pytest.param(80, 64, [0, 3], id="prefill-T80-D64"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("length,head_dim,starts", SHAPES)
def test_qk_norm_rope_append(length, head_dim, starts, dtype):
    check(make_case(2, length, 10, 2, head_dim, starts, seed=length + head_dim, dtype=dtype), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fused", [True, False], ids=["qkv-views", "contiguous"])
def test_released_14b_heads(fused, dtype):
    """The 14B backbone's 40 query heads on 8 KV heads of 128 channels: 2 guidance rows of a P = 16 block after
    different prompt lengths, and 3 rows of 3 tokens."""
    check(make_case(2, 16, 40, 8, 128, [77, 130], seed=5, dtype=dtype, fused=fused), dtype)
    check(make_case(3, 3, 40, 8, 128, [1, 70, 22], seed=6, dtype=dtype, fused=fused), dtype)


# the engine's tiny models (D = 16: several rows per warp) and other compiled head dims; ragged last blocks
SMALL_SHAPES = [  # (B, T, Hq, Hkv, D, starts per row)
    pytest.param(2, 64, 4, 2, 16, [0, 37], id="B2-T64-4q2kv-D16"),
    pytest.param(4, 16, 1, 1, 64, [3, 0, 21, 8], id="B4-T16-1h-D64"),
    pytest.param(3, 5, 6, 2, 16, [9, 0, 4], id="B3-T5-6q2kv-D16"),
    pytest.param(2, 7, 3, 3, 32, [4, 11], id="B2-T7-MHA-D32"),
    pytest.param(2, 3, 4, 1, 256, [0, 6], id="B2-T3-MQA-D256"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("batch,length,q_heads,kv_heads,head_dim,starts", SMALL_SHAPES)
def test_row_groups_and_ragged_blocks(batch, length, q_heads, kv_heads, head_dim, starts, dtype):
    check(make_case(batch, length, q_heads, kv_heads, head_dim, starts, seed=100 + head_dim, dtype=dtype), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("head_dim", [16, 128])
def test_misaligned_views_take_the_scalar_path(head_dim, dtype):
    case = make_case(2, 5, 4, 2, head_dim, [2, 7], seed=150 + head_dim, dtype=dtype, misaligned=True)
    assert case.q.data_ptr() % 16 != 0
    check(case, dtype)


def test_fresh_q_out_equals_given_q_out():
    case = make_case(2, 5, 8, 2, 128, [3, 9], seed=200, dtype=torch.float32)
    garbage_k, garbage_v = case.k_cache.clone(), case.v_cache.clone()
    fresh = cuda_pre_attention.qk_norm_rope_append(*op_args(case))
    assert fresh.shape == (2, 8, 5, 128) and fresh.is_contiguous()
    again = with_fresh_caches(case, garbage_k, garbage_v)
    given = cuda_pre_attention.qk_norm_rope_append(*op_args(again), q_out=poisoned(2, 8, 5, 128, device=DEVICE))
    assert torch.equal(fresh, given)
    assert torch.equal(case.k_cache, again.k_cache) and torch.equal(case.v_cache, again.v_cache)


def test_positions_past_the_cache_are_not_written():
    """A row whose block runs past Lmax: the positions inside are written, nothing outside the cache is touched
    (the launcher cannot check device lengths without a sync)."""
    case = make_case(2, 4, 4, 2, 64, [0, 3], seed=210, dtype=torch.float32)
    max_len = case.k_cache.shape[2]
    storage_k = torch.zeros(2 * case.k_cache.numel(), device=DEVICE)  # the cache followed by a guard region
    storage_v = torch.zeros_like(storage_k)
    k_cache = storage_k[:case.k_cache.numel()].view(case.k_cache.shape)
    v_cache = storage_v[:case.v_cache.numel()].view(case.v_cache.shape)
    case = replace(case, k_cache=k_cache, v_cache=v_cache,
                   lengths=torch.tensor([0, max_len - 2], dtype=torch.int32, device=DEVICE))
    cuda_pre_attention.qk_norm_rope_append(*op_args(case))
    assert torch.isfinite(k_cache[1, :, max_len - 2:]).all() and k_cache[1, :, max_len - 2:].abs().sum() > 0
    assert torch.equal(v_cache[1, :, max_len - 2:], case.v[1, :2].transpose(0, 1))
    written = torch.zeros(k_cache.shape, dtype=torch.bool, device=DEVICE)
    written[0, :, :4] = True
    written[1, :, max_len - 2:] = True
    for storage, cache in ((storage_k, k_cache), (storage_v, v_cache)):
        assert (storage[cache.numel():] == 0).all() and (cache[~written] == 0).all()


def test_positions_past_the_tables_give_zeros():
    """Positions inside the cache but past the RoPE tables: q and k come out as zeros (as in the Triton kernel),
    v is still copied."""
    case = make_case(1, 4, 2, 1, 64, [0], seed=220, dtype=torch.float32)
    case = replace(case, cos=case.cos[:2].contiguous(), sin=case.sin[:2].contiguous())
    q_out = cuda_pre_attention.qk_norm_rope_append(*op_args(case))
    assert torch.isfinite(q_out).all()
    assert (q_out[:, :, 2:] == 0).all() and (q_out[:, :, :2] != 0).any()
    assert (case.k_cache[0, :, 2:4] == 0).all()
    assert torch.equal(case.v_cache[0, :, :4], case.v[0].transpose(0, 1))


# ---------------------------------------------------------------- argument errors

def _base(change=None) -> dict:
    """Valid arguments, with ``change(args)``'s entries replacing some."""
    case = make_case(2, 4, 4, 2, 64, [0, 3], seed=300, dtype=torch.float32, fused=False)
    args = dict(q=case.q, k=case.k, v=case.v, q_norm_weight=case.q_weight, k_norm_weight=case.k_weight, eps=EPS,
                cos_table=case.cos, sin_table=case.sin, k_cache=case.k_cache, v_cache=case.v_cache,
                lengths=case.lengths)
    args.update(change(args) if change else {})
    return args


ARGUMENT_ERRORS = [
    ("lengths", lambda a: {"lengths": a["lengths"].long()}, "lengths has dtype torch.int64"),
    ("lengths-shape", lambda a: {"lengths": a["lengths"][:1]}, r"lengths has shape \[1\], expected \[2\]"),
    ("gqa", lambda a: {"q": torch.cat([a["q"], a["q"][:, :, :1]], dim=2)}, "expected a divisor of 5"),
    ("v-dtype", lambda a: {"v": a["v"].double()}, "v has dtype torch.float64"),
    ("k-length", lambda a: {"k": a["k"][:, :3]}, r"k has shape \[2, 3, 2, 64\]"),
    ("cache-view", lambda a: {"k_cache": a["k_cache"].transpose(0, 1).contiguous().transpose(0, 1)},
     "k_cache must be contiguous"),
    ("channel-stride", lambda a: {"q": a["q"].transpose(2, 3).contiguous().transpose(2, 3)},
     "q must have stride 1 in its last"),
    ("table-width", lambda a: {"cos_table": a["cos_table"][:, :32].contiguous()},
     r"cos_table has shape \[\d+, 32\], expected \[\*, 64\]"),
    ("table-device", lambda a: {"sin_table": a["sin_table"].cpu()}, "sin_table is on cpu"),
    ("weight-shape", lambda a: {"k_norm_weight": a["k_norm_weight"][:32]}, "k_norm_weight has shape"),
    ("eps", lambda a: {"eps": 0.0}, "eps must be a positive number"),
    ("head-dim", lambda a: {k: a[k][..., :40].contiguous() for k in ("q", "k", "v")},
     "head dim D = 40 is not compiled into the CUDA kernel"),
    ("q_out", lambda a: {"q_out": torch.empty(2, 4, 4, 64, device=DEVICE).transpose(1, 2)},
     "q_out must be contiguous"),
]


@pytest.mark.parametrize("change,match", [pytest.param(c, m, id=i) for i, c, m in ARGUMENT_ERRORS])
def test_argument_errors(change, match):
    with pytest.raises(ValueError, match=match):
        cuda_pre_attention.qk_norm_rope_append(**_base(change))


def test_operator_checks():
    """The C++ checks (the operator called directly, past the Python checks) raise instead of launching."""
    args = _base()
    q_out = torch.empty(2, 4, 4, 64, device=DEVICE)
    cuda_pre_attention.qk_norm_rope_append(**args, q_out=q_out)  # loads the extension
    op = torch.ops.bitdance_rt.qk_norm_rope_append
    ordered = [args[name] for name in ("q", "k", "v", "q_norm_weight", "k_norm_weight", "eps", "cos_table",
                                       "sin_table", "k_cache", "v_cache", "lengths")]
    with pytest.raises(RuntimeError, match="qk_norm_rope_append: lengths has dtype Long"):
        op(*ordered[:10], args["lengths"].long(), q_out)
    with pytest.raises(RuntimeError, match="qk_norm_rope_append: q_out has shape"):
        op(*ordered, q_out[:, :2])
    bad_dim = [t[..., :40].contiguous() for t in ordered[:3]]
    with pytest.raises(RuntimeError, match="qk_norm_rope_append: q_norm_weight has shape"):
        op(*bad_dim, *ordered[3:], q_out)
