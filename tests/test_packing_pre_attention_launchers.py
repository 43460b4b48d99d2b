"""The Python launchers of the CUDA token packing and fused pre-attention (``bitdance_rt.cuda_ops.token_packing``,
``bitdance_rt.cuda_ops.pre_attention``) on the CPU: their argument checks fire before the extension is needed,
with the Triton launchers' messages; valid CPU tensors are refused with ``UnsupportedDeviceError`` (the extension
runs on CUDA tensors only); the launchers keep the Triton signatures and name their references.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from bitdance_rt.cuda_ops import pre_attention as cuda_pre_attention
from bitdance_rt.cuda_ops import token_packing as cuda_packing
from bitdance_rt.errors import UnsupportedDeviceError
from bitdance_rt.kernels import pre_attention, token_packing
from bitdance_rt.reference.pre_attention import qk_norm_rope_append_reference
from bitdance_rt.reference.rope import rotate_half_tables
from bitdance_rt.reference.token_packing import bit_linear_ref, pack_signs_ref, unpack_signs_ref


def randn(*shape: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen)


def words(*shape: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(-2 ** 31, 2 ** 31, shape, generator=gen, dtype=torch.int64).to(torch.int32)


def test_signatures_and_references():
    assert inspect.signature(cuda_packing.pack_signs) == inspect.signature(token_packing.pack_signs)
    assert inspect.signature(cuda_packing.unpack_signs) == inspect.signature(token_packing.unpack_signs)
    assert (inspect.signature(cuda_pre_attention.qk_norm_rope_append)
            == inspect.signature(pre_attention.qk_norm_rope_append))
    assert cuda_packing.REFERENCE == {"pack_signs": pack_signs_ref, "unpack_signs": unpack_signs_ref,
                                      "bit_linear": bit_linear_ref}
    assert cuda_pre_attention.REFERENCE is qk_norm_rope_append_reference


def test_packing_argument_errors():
    with pytest.raises(ValueError, match="pack_signs: tokens has 48 channels, expected a last dimension that is a "
                                         "multiple of 32"):
        cuda_packing.pack_signs(randn(4, 48, seed=1))
    with pytest.raises(ValueError, match="pack_signs: tokens has dtype torch.int32"):
        cuda_packing.pack_signs(torch.ones(4, 32, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"pack_signs: out has shape \[4, 2\], expected \[4, 1\]"):
        cuda_packing.pack_signs(randn(4, 32, seed=2), out=torch.empty(4, 2, dtype=torch.int32))
    with pytest.raises(ValueError, match="pack_signs: tokens must be contiguous"):
        cuda_packing.pack_signs(randn(32, 4, seed=3).t())
    w = words(4, 2, seed=4)
    with pytest.raises(ValueError, match="unpack_signs: words has dtype torch.int64"):
        cuda_packing.unpack_signs(w.long(), torch.float32)
    with pytest.raises(ValueError, match="unpack_signs: dtype is torch.int8"):
        cuda_packing.unpack_signs(w, torch.int8)
    with pytest.raises(ValueError, match="unpack_signs: words is a 0-d tensor"):
        cuda_packing.unpack_signs(w[0, 0], torch.float32)
    with pytest.raises(ValueError, match="unpack_signs: out has dtype torch.float16, expected torch.float32"):
        cuda_packing.unpack_signs(w, torch.float32, out=torch.empty(4, 64, dtype=torch.float16))
    weight = randn(8, 64, seed=5)
    with pytest.raises(ValueError, match=r"bit_linear: weight has shape \[8, 32\], expected \[\*, 64\]"):
        cuda_packing.bit_linear(w, weight[:, :32].contiguous())
    with pytest.raises(ValueError, match="bit_linear: weight has dtype torch.float64"):
        cuda_packing.bit_linear(w, weight.double())
    with pytest.raises(ValueError, match="bit_linear: weight must be contiguous"):
        cuda_packing.bit_linear(w, randn(64, 8, seed=6).t())
    with pytest.raises(ValueError, match=r"bit_linear: bias has shape \[7\], expected \[8\]"):
        cuda_packing.bit_linear(w, weight, randn(7, seed=7))
    with pytest.raises(ValueError, match="bit_linear: bias has dtype torch.bfloat16, expected torch.float32"):
        cuda_packing.bit_linear(w, weight, randn(8, seed=8).bfloat16())
    with pytest.raises(ValueError, match=r"bit_linear: out has shape \[4, 9\], expected \[4, 8\]"):
        cuda_packing.bit_linear(w, weight, out=torch.empty(4, 9))
    with pytest.raises(ValueError, match="bit_linear: words has dtype torch.float32"):
        cuda_packing.bit_linear(w.float(), weight)


def test_packing_refuses_cpu_tensors_before_allocating():
    w = words(4, 1, seed=9)
    for call in (lambda: cuda_packing.pack_signs(randn(4, 32, seed=10)),
                 lambda: cuda_packing.unpack_signs(w, torch.bfloat16),
                 lambda: cuda_packing.bit_linear(w, randn(8, 32, seed=11), randn(8, seed=12))):
        with pytest.raises(UnsupportedDeviceError, match="the CUDA extension runs on CUDA tensors, got tensors on "
                                                         "cpu"):
            call()


def pre_attention_args(head_dim: int = 64) -> dict:
    """Valid CPU arguments: B = 2, T = 4, 4 query heads on 2 KV heads."""
    cos, sin = rotate_half_tables(torch.arange(16), head_dim, 1e6)
    return dict(q=randn(2, 4, 4, head_dim, seed=20), k=randn(2, 4, 2, head_dim, seed=21),
                v=randn(2, 4, 2, head_dim, seed=22), q_norm_weight=1 + randn(head_dim, seed=23),
                k_norm_weight=1 + randn(head_dim, seed=24), eps=1e-6, cos_table=cos, sin_table=sin,
                k_cache=randn(2, 2, 12, head_dim, seed=25), v_cache=randn(2, 2, 12, head_dim, seed=26),
                lengths=torch.tensor([0, 3], dtype=torch.int32))


PRE_ATTENTION_ERRORS = [
    ("lengths", lambda a: {"lengths": a["lengths"].long()}, ValueError, "lengths has dtype torch.int64"),
    ("gqa", lambda a: {"q": torch.cat([a["q"], a["q"][:, :, :1]], dim=2)}, ValueError, "expected a divisor of 5"),
    ("v-dtype", lambda a: {"v": a["v"].double()}, ValueError, "v has dtype torch.float64"),
    ("k-length", lambda a: {"k": a["k"][:, :3]}, ValueError, r"k has shape \[2, 3, 2, 64\]"),
    ("v-cache", lambda a: {"v_cache": a["v_cache"][:, :, :-1].contiguous()}, ValueError, "v_cache has shape"),
    ("channel-stride", lambda a: {"q": a["q"].transpose(2, 3).contiguous().transpose(2, 3)}, ValueError,
     "q must have stride 1 in its last"),
    ("table-dtype", lambda a: {"sin_table": a["sin_table"].double()}, ValueError, "sin_table has dtype"),
    ("weight-shape", lambda a: {"k_norm_weight": a["k_norm_weight"][:32]}, ValueError, "k_norm_weight has shape"),
    ("eps", lambda a: {"eps": 0.0}, ValueError, "eps must be a positive number"),
    ("odd-D", lambda a: {k: a[k][..., :63].contiguous() for k in ("q", "k", "v")}, ValueError, "must be even"),
    ("head-dim", lambda a: {k: a[k][..., :40].contiguous() for k in ("q", "k", "v")}, ValueError,
     "head dim D = 40 is not compiled into the CUDA kernel"),
    ("q_out", lambda a: {"q_out": torch.empty(2, 4, 4, 64).transpose(1, 2)}, ValueError, "q_out must be contiguous"),
    ("weight-type", lambda a: {"q_norm_weight": None}, TypeError, "q_norm_weight must be a torch.Tensor"),
    ("k-type", lambda a: {"k": a["k"].numpy()}, TypeError, "k must be a torch.Tensor"),
]


@pytest.mark.parametrize("change,error,match", [pytest.param(c, e, m, id=i) for i, c, e, m in PRE_ATTENTION_ERRORS])
def test_pre_attention_argument_errors(change, error, match):
    args = pre_attention_args()
    args.update(change(args))
    with pytest.raises(error, match="qk_norm_rope_append: .*" + match):
        cuda_pre_attention.qk_norm_rope_append(**args)


def test_pre_attention_refuses_cpu_tensors_and_leaves_caches_alone():
    args = pre_attention_args(head_dim=16)
    k_cache, v_cache = args["k_cache"].clone(), args["v_cache"].clone()
    with pytest.raises(UnsupportedDeviceError, match="qk_norm_rope_append: the CUDA extension runs on CUDA tensors"):
        cuda_pre_attention.qk_norm_rope_append(**args)
    assert torch.equal(args["k_cache"], k_cache) and torch.equal(args["v_cache"], v_cache)
