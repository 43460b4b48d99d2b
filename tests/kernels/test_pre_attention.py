"""The fused pre-attention kernels (q/k RMSNorm + RoPE + KV-cache append) against their float64 references in
``bitdance_rt.reference.pre_attention``, and those references against the backbones' own attention modules.

Every case: fresh seeded inputs, ragged per-row lengths, caches pre-filled with random garbage except the rows
the launch must write, which are NaN (an unwritten element fails). After the launch the rows
``[lengths[b], lengths[b] + T)`` must equal the reference (K: relative error; V: bit for bit, it is a copy) and
every other cache element must be bit-identical to its garbage. q_out is NaN-poisoned before the launch.
Tolerance: relative error ``||out − ref|| / ||ref||`` below 1e-5 in float32 (measured ≤ 1e-7), 1e-2 in bf16
(GPU only, where bf16 must also match the bf16 reference bit for bit on at least 99% of the elements).
"""

from __future__ import annotations

import pytest
import torch
from kernel_testing import DEVICE, DTYPES, assert_close, poisoned, randn, tolerance
from pre_attention_cases import Case, f64, garbage_caches

from bitdance_rt.errors import InvalidRequestError
from bitdance_rt.kernels.pre_attention import qk_norm_rope_append, rope_append_interleaved
from bitdance_rt.reference import c2i_backbone
from bitdance_rt.reference.kv_cache import KVCache
from bitdance_rt.reference.pre_attention import qk_norm_rope_append_reference, rope_append_interleaved_reference
from bitdance_rt.reference.qwen3 import Qwen3Attention, Qwen3Config
from bitdance_rt.reference.rope import c2i_rope_tables, rotate_half_tables

THETA = 1e6  # Qwen3's rope_theta
EPS = 1e-6
C2I_PARALLEL = 4  # tables of a P = 4 class-conditional model: 64 + 3 prefix positions, then a 16 x 16 grid
C2I_PREFIX = 64 + C2I_PARALLEL - 1


def make_case(batch: int, length: int, q_heads: int, kv_heads: int, head_dim: int, starts: list[int], seed: int,
              dtype: torch.dtype, interleaved: bool) -> Case:
    """Inputs with an offset (so the norm matters), caches of garbage with the rows to be written set to NaN."""
    q = randn(batch, length, q_heads, head_dim, seed=seed, dtype=dtype, scale=2.0) + 0.5
    k = randn(batch, length, kv_heads, head_dim, seed=seed + 1, dtype=dtype, scale=2.0) - 0.5
    v = randn(batch, length, kv_heads, head_dim, seed=seed + 2, dtype=dtype)
    q_weight = 1.0 + randn(head_dim, seed=seed + 3, dtype=dtype, scale=0.3)
    k_weight = 1.0 + randn(head_dim, seed=seed + 4, dtype=dtype, scale=0.3)
    if interleaved:
        cos, sin = c2i_rope_tables(16, head_dim, C2I_PREFIX, int(C2I_PARALLEL ** 0.5))
    else:
        cos, sin = rotate_half_tables(torch.arange(max(starts) + length + 7), head_dim, THETA)
    k_cache, v_cache, written, lengths = garbage_caches(batch, kv_heads, max(starts) + length + 5, head_dim, length,
                                                        starts, seed + 5, dtype, DEVICE)
    return Case(q, k, v, q_weight, k_weight, cos.to(DEVICE), sin.to(DEVICE), k_cache, v_cache, lengths, written)


def launch(case: Case, interleaved: bool, q_out: torch.Tensor | None) -> torch.Tensor:
    if interleaved:
        return rope_append_interleaved(case.q, case.k, case.v, case.cos, case.sin, case.k_cache, case.v_cache,
                                       case.lengths, q_out=q_out)
    return qk_norm_rope_append(case.q, case.k, case.v, case.q_weight, case.k_weight, EPS, case.cos, case.sin,
                               case.k_cache, case.v_cache, case.lengths, q_out=q_out)


def reference(case: Case, interleaved: bool, k_cache: torch.Tensor, v_cache: torch.Tensor,
              wide: bool = True) -> torch.Tensor:
    """The reference on float64 copies of the inputs (``wide``) or on the inputs themselves."""
    cast = f64 if wide else (lambda t: t)
    q, k, v = cast(case.q), cast(case.k), cast(case.v)
    cos, sin, lengths = (t.to(q.device) for t in (case.cos, case.sin, case.lengths))  # f64 copies live on the CPU
    if interleaved:
        return rope_append_interleaved_reference(q, k, v, cos, sin, k_cache, v_cache, lengths)
    return qk_norm_rope_append_reference(q, k, v, cast(case.q_weight), cast(case.k_weight), EPS, cos, sin,
                                         k_cache, v_cache, lengths)


def check(case: Case, interleaved: bool, dtype: torch.dtype) -> torch.Tensor:
    """Launch on ``case`` with a poisoned q_out, check everything, return q_out."""
    garbage_k, garbage_v = case.k_cache.clone(), case.v_cache.clone()
    q_out = poisoned(*case.q.shape[:1], case.q.shape[2], case.q.shape[1], case.q.shape[3], dtype=dtype)
    assert launch(case, interleaved, q_out) is q_out

    ref_k, ref_v = f64(garbage_k), f64(garbage_v)
    ref_q = reference(case, interleaved, ref_k, ref_v)
    tol = tolerance(dtype)
    assert_close(q_out, ref_q, tol)
    written = case.written
    assert_close(case.k_cache[written], ref_k[written.cpu()], tol)
    # V is a copy: every written row equals v bit for bit
    for row, start in enumerate(case.lengths.tolist()):
        stored = case.v_cache[row, :, start:start + case.q.shape[1]]
        assert torch.equal(stored, case.v[row].transpose(0, 1))
    # nothing else in either cache moved
    assert torch.equal(case.k_cache[~written], garbage_k[~written])
    assert torch.equal(case.v_cache[~written], garbage_v[~written])

    if dtype == torch.bfloat16:  # the rounding steps of the reference are mirrored: nearly bitwise equal
        same_k, same_v = garbage_k.clone(), garbage_v.clone()
        same_q = reference(case, interleaved, same_k, same_v, wide=False)
        assert (q_out == same_q).float().mean().item() >= 0.99
        assert (case.k_cache[written] == same_k[written]).float().mean().item() >= 0.99
    return q_out


# decode blocks T in {1, 4, 16, 64} and a prefill, head dims 64 and 128, GQA 10 query heads on 2 KV heads
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
    case = make_case(2, length, 10, 2, head_dim, starts, seed=length + head_dim, dtype=dtype, interleaved=False)
    check(case, interleaved=False, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("length,head_dim,starts", SHAPES)
def test_rope_append_interleaved(length, head_dim, starts, dtype):
    # starts around the end of the prefix: rows cover zero-angle prefix positions and image positions
    starts = [C2I_PREFIX - 4 + s for s in starts]
    case = make_case(2, length, 10, 2, head_dim, starts, seed=length + head_dim, dtype=dtype, interleaved=True)
    check(case, interleaved=True, dtype=dtype)


@pytest.mark.parametrize("interleaved", [False, True], ids=["rotate_half", "interleaved"])
@pytest.mark.parametrize("q_heads,kv_heads,head_dim", [(40, 8, 128), (6, 3, 40), (4, 4, 64)],
                         ids=["14B-heads", "odd-heads-D40", "MHA"])
def test_head_tiles(q_heads, kv_heads, head_dim, interleaved):
    """3 rows x 3 tokens x 40 heads = 360 q rows cross the 32-row tiles of D = 128 (tiles span tokens and batch
    rows); 3 KV heads and D = 40 leave masked lanes; three rows of different lengths."""
    starts = [C2I_PREFIX + 1, C2I_PREFIX - 2, C2I_PREFIX + 20]
    case = make_case(3, 3, q_heads, kv_heads, head_dim, starts, seed=q_heads, dtype=torch.float32,
                     interleaved=interleaved)
    check(case, interleaved, torch.float32)


# the engine's tiny test models: one tile of (token, head) rows spans several tokens and batch rows of different
# lengths; the last shape leaves the q and KV tiles partly masked
ENGINE_SHAPES = [  # (B, T, Hq, Hkv, D, starts per row)
    pytest.param(2, 64, 4, 2, 16, [0, 37], id="B2-T64-4q2kv-D16"),
    pytest.param(4, 16, 1, 1, 64, [3, 0, 21, 8], id="B4-T16-1h-D64"),
    pytest.param(3, 5, 6, 2, 16, [9, 0, 4], id="B3-T5-6q2kv-D16"),
]


@pytest.mark.parametrize("interleaved", [False, True], ids=["rotate_half", "interleaved"])
@pytest.mark.parametrize("batch,length,q_heads,kv_heads,head_dim,starts", ENGINE_SHAPES)
def test_row_tiles_span_tokens_and_rows(batch, length, q_heads, kv_heads, head_dim, starts, interleaved):
    if interleaved:  # around the end of the zero-angle prefix
        starts = [C2I_PREFIX - 4 + s for s in starts]
    case = make_case(batch, length, q_heads, kv_heads, head_dim, starts, seed=200 + batch, dtype=torch.float32,
                     interleaved=interleaved)
    check(case, interleaved, torch.float32)


def test_strided_views_of_a_fused_projection():
    """q, k, v as views into one [B, T, 3·H·D] projection (the class-conditional ``wqkv`` output chunked): checked
    against the reference, then equal bit for bit to a launch on contiguous copies with a fresh q_out."""
    batch, length, heads, head_dim, starts = 2, 5, 3, 64, [C2I_PREFIX, C2I_PREFIX + 7]
    fused = randn(batch, length, 3 * heads * head_dim, seed=40)
    views = [z.view(batch, length, heads, head_dim) for z in fused.chunk(3, dim=-1)]
    assert not views[0].is_contiguous()
    strided = make_case(batch, length, heads, heads, head_dim, starts, seed=41, dtype=torch.float32,
                        interleaved=True)
    strided.q, strided.k, strided.v = views
    q_strided = check(strided, True, torch.float32)

    contiguous = make_case(batch, length, heads, heads, head_dim, starts, seed=41, dtype=torch.float32,
                           interleaved=True)
    contiguous.q, contiguous.k, contiguous.v = (z.contiguous() for z in views)
    fresh = launch(contiguous, True, None)
    assert fresh.shape == (batch, heads, length, head_dim) and fresh.is_contiguous()
    assert torch.equal(fresh, q_strided)
    assert torch.equal(contiguous.k_cache, strided.k_cache) and torch.equal(contiguous.v_cache, strided.v_cache)


def test_positions_past_the_cache_are_not_written():
    """A row whose block runs past Lmax: the positions inside are written, nothing outside the cache's rows is
    touched (the launcher cannot check device lengths without a sync)."""
    case = make_case(2, 4, 4, 2, 64, [0, 3], seed=50, dtype=torch.float32, interleaved=False)
    max_len = case.k_cache.shape[2]
    storage_k = torch.zeros(2 * case.k_cache.numel(), device=DEVICE)  # the cache followed by a guard region
    storage_v = torch.zeros_like(storage_k)
    k_cache = storage_k[:case.k_cache.numel()].view(case.k_cache.shape)
    v_cache = storage_v[:case.v_cache.numel()].view(case.v_cache.shape)
    case.k_cache, case.v_cache = k_cache, v_cache
    case.lengths = torch.tensor([0, max_len - 2], dtype=torch.int32, device=DEVICE)
    launch(case, False, None)
    assert torch.isfinite(k_cache[1, :, max_len - 2:]).all() and k_cache[1, :, max_len - 2:].abs().sum() > 0
    assert torch.equal(v_cache[1, :, max_len - 2:], case.v[1, :2].transpose(0, 1))
    written = torch.zeros(k_cache.shape, dtype=torch.bool, device=DEVICE)
    written[0, :, :4] = True
    written[1, :, max_len - 2:] = True
    for storage, cache in ((storage_k, k_cache), (storage_v, v_cache)):
        assert (storage[cache.numel():] == 0).all() and (cache[~written] == 0).all()


# ---------------------------------------------------------------- argument errors

def _base(change=None) -> dict:
    """Valid arguments of qk_norm_rope_append, with ``change(args)``'s entries replacing some."""
    case = make_case(2, 4, 4, 2, 64, [0, 3], seed=60, dtype=torch.float32, interleaved=False)
    args = dict(q=case.q, k=case.k, v=case.v, q_norm_weight=case.q_weight, k_norm_weight=case.k_weight, eps=EPS,
                cos_table=case.cos, sin_table=case.sin, k_cache=case.k_cache, v_cache=case.v_cache,
                lengths=case.lengths)
    args.update(change(args) if change else {})
    return args


ARGUMENT_ERRORS = [
    ("lengths", lambda a: {"lengths": a["lengths"].long()}, "lengths has dtype torch.int64"),
    ("lengths-shape", lambda a: {"lengths": a["lengths"][:1]}, r"lengths has shape \[1\], expected \[2\]"),
    ("k-heads", lambda a: {"k": a["k"][:, :, :1].contiguous(), "v": a["v"][:, :, :1].contiguous()},
     "k_cache has shape"),
    ("gqa", lambda a: {"q": torch.cat([a["q"], a["q"][:, :, :1]], dim=2)}, "expected a divisor of 5"),
    ("v-dtype", lambda a: {"v": a["v"].double()}, "v has dtype torch.float64"),
    ("q-int", lambda a: {"q": a["q"].int()}, "q has dtype torch.int32"),
    ("k-length", lambda a: {"k": a["k"][:, :3]}, r"k has shape \[2, 3, 2, 64\]"),
    ("v-cache", lambda a: {"v_cache": a["v_cache"][:, :, :-1].contiguous()}, "v_cache has shape"),
    ("cache-view", lambda a: {"k_cache": a["k_cache"].transpose(0, 1).contiguous().transpose(0, 1)},
     "k_cache must be contiguous"),
    ("channel-stride", lambda a: {"q": a["q"].transpose(2, 3).contiguous().transpose(2, 3)},
     "q must have stride 1 in its last"),
    ("table-width", lambda a: {"cos_table": a["cos_table"][:, :32].contiguous()},
     r"cos_table has shape \[\d+, 32\], expected \[\*, 64\]"),
    ("table-dtype", lambda a: {"sin_table": a["sin_table"].double()}, "sin_table has dtype torch.float64"),
    ("weight-dtype", lambda a: {"q_norm_weight": a["q_norm_weight"].double()}, "q_norm_weight has dtype"),
    ("weight-shape", lambda a: {"k_norm_weight": a["k_norm_weight"][:32]}, "k_norm_weight has shape"),
    ("eps", lambda a: {"eps": 0.0}, "eps must be a positive number"),
    ("odd-D", lambda a: {k: a[k][..., :63].contiguous() for k in ("q", "k", "v")}, "must be even"),
    ("q_out", lambda a: {"q_out": torch.empty(2, 4, 4, 64, device=DEVICE).transpose(1, 2)},
     "q_out must be contiguous"),
    ("q_out-dtype", lambda a: {"q_out": torch.empty(2, 4, 4, 64, dtype=torch.float64, device=DEVICE)},
     "q_out has dtype torch.float64"),
]


@pytest.mark.parametrize("change,match", [pytest.param(c, m, id=i) for i, c, m in ARGUMENT_ERRORS])
def test_argument_errors(change, match):
    args = _base(change)
    with pytest.raises(ValueError, match=match):
        qk_norm_rope_append(**args)


def test_argument_errors_interleaved_and_types():
    args = _base()
    with pytest.raises(ValueError, match=r"cos_table has shape \[\d+, 64\], expected \[\*, 32\]"):
        rope_append_interleaved(args["q"], args["k"], args["v"], args["cos_table"], args["sin_table"],
                                args["k_cache"], args["v_cache"], args["lengths"])
    with pytest.raises(TypeError, match="q_norm_weight must be a torch.Tensor"):
        qk_norm_rope_append(**{**args, "q_norm_weight": None})
    with pytest.raises(TypeError, match="k must be a torch.Tensor"):
        rope_append_interleaved(args["q"], args["k"].cpu().numpy(), args["v"], args["cos_table"],
                                args["sin_table"], args["k_cache"], args["v_cache"], args["lengths"])


def test_reference_rejects_positions_outside_cache():
    case = make_case(2, 4, 4, 2, 64, [0, 3], seed=70, dtype=torch.float32, interleaved=False)
    case.lengths = torch.tensor([0, case.k_cache.shape[2] - 3], dtype=torch.int32, device=DEVICE)
    with pytest.raises(InvalidRequestError, match="row 1 would write positions"):
        reference(case, False, f64(case.k_cache), f64(case.v_cache))


# ---------------------------------------------------------------- the references against the backbone modules

def random_state(module: torch.nn.Module, seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A random value for every parameter of a meta-device module; norm weights around 1."""
    state = {}
    for index, (name, meta) in enumerate(module.state_dict().items()):
        centre, scale = (1.0, 0.3) if "norm" in name else (0.0, meta.shape[-1] ** -0.5)
        state[name] = centre + randn(*meta.shape, seed=seed + index, dtype=dtype, scale=scale, device="cpu")
    return state


def garbage_cache(batch: int, heads: int, max_len: int, head_dim: int, start: int, seed: int,
                  dtype: torch.dtype) -> KVCache:
    cache = KVCache(1, batch, heads, max_len, head_dim, device="cpu", dtype=dtype)
    cache.keys[0].copy_(randn(*cache.keys[0].shape, seed=seed, dtype=dtype, device="cpu"))
    cache.values[0].copy_(randn(*cache.values[0].shape, seed=seed + 1, dtype=dtype, device="cpu"))
    cache.advance(start)
    return cache


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_reference_equals_qwen3_attention(monkeypatch, dtype):
    """Qwen3Attention's q (as it enters SDPA) and its cache equal the functional reference bit for bit."""
    config = Qwen3Config(vocab_size=8, hidden_size=48, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=6, num_key_value_heads=2, head_dim=16, rms_norm_eps=EPS,
                         rope_theta=THETA)
    with torch.device("meta"):
        attention = Qwen3Attention(config)
    attention.load_state_dict(random_state(attention, seed=80, dtype=dtype), assign=True)
    batch, length, start, max_len = 2, 5, 7, 16
    x = randn(batch, length, config.hidden_size, seed=90, dtype=dtype, device="cpu")
    cos, sin = rotate_half_tables(torch.arange(max_len), config.head_dim, THETA)
    cache = garbage_cache(batch, config.num_key_value_heads, max_len, config.head_dim, start, 91, dtype)
    k_cache, v_cache = cache.keys[0].clone(), cache.values[0].clone()

    seen = {}
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        seen["q"] = q
        return real_sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    allowed = torch.ones(batch, 1, length, start + length, dtype=torch.bool)
    with torch.no_grad():
        attention(x, cos[start:start + length], sin[start:start + length], allowed, cache, 0)
        shape = (batch, length, -1, config.head_dim)
        q = attention.q_proj(x).view(shape)
        k = attention.k_proj(x).view(shape)
        v = attention.v_proj(x).view(shape)
        q_ref = qk_norm_rope_append_reference(q, k, v, attention.q_norm.weight, attention.k_norm.weight, EPS, cos,
                                              sin, k_cache, v_cache, torch.full((batch,), start, dtype=torch.int32))
    assert torch.equal(q_ref, seen["q"])
    assert torch.equal(k_cache, cache.keys[0]) and torch.equal(v_cache, cache.values[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_reference_equals_c2i_attention(monkeypatch, dtype):
    """The class-conditional attention's rotated q and its cache equal the functional reference bit for bit, on a
    block that straddles the zero-angle prefix and the image positions."""
    dim, heads = 64, 4
    with torch.device("meta"):
        attention = c2i_backbone.Attention(dim, heads)
    attention.load_state_dict(random_state(attention, seed=100, dtype=dtype), assign=True)
    head_dim = dim // heads
    cos, sin = c2i_rope_tables(4, head_dim, C2I_PREFIX, 2)
    batch, length, start, max_len = 2, 6, C2I_PREFIX - 2, C2I_PREFIX + 16
    x = randn(batch, length, dim, seed=110, dtype=dtype, device="cpu")
    cache = garbage_cache(batch, heads, max_len, head_dim, start, 111, dtype)
    k_cache, v_cache = cache.keys[0].clone(), cache.values[0].clone()

    rotated = []
    real_rotate = c2i_backbone.apply_interleaved

    def spy(x, cos, sin):
        rotated.append(real_rotate(x, cos, sin))
        return rotated[-1]

    monkeypatch.setattr(c2i_backbone, "apply_interleaved", spy)
    allowed = torch.ones(length, start + length, dtype=torch.bool)
    with torch.no_grad():
        attention(x, cos[start:start + length], sin[start:start + length], allowed, cache, 0)
        q, k, v = (z.view(batch, length, heads, head_dim) for z in attention.wqkv(x).chunk(3, dim=-1))
        q_ref = rope_append_interleaved_reference(q, k, v, cos, sin, k_cache, v_cache,
                                                  torch.full((batch,), start, dtype=torch.int32))
    assert torch.equal(q_ref, rotated[0].transpose(1, 2))
    assert torch.equal(k_cache, cache.keys[0]) and torch.equal(v_cache, cache.values[0])


def test_reference_runs_in_float64():
    """Float64 inputs stay float64 through the norm and the interleaved rotation (no float32 step)."""
    case = make_case(1, 3, 2, 1, 16, [C2I_PREFIX], seed=120, dtype=torch.float64, interleaved=True)
    q_ref = reference(case, True, case.k_cache.clone(), case.v_cache.clone(), wide=False)
    angle_cos, angle_sin = case.cos[C2I_PREFIX:C2I_PREFIX + 3].double(), case.sin[C2I_PREFIX:C2I_PREFIX + 3].double()
    even, odd = case.q[..., 0::2], case.q[..., 1::2]
    c, s = angle_cos[None, :, None, :], angle_sin[None, :, None, :]
    expected = torch.stack([even * c - odd * s, odd * c + even * s], dim=-1).flatten(-2).transpose(1, 2)
    assert q_ref.dtype == torch.float64
    assert torch.allclose(q_ref, expected, rtol=1e-15, atol=1e-15)
