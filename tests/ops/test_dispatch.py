"""The dispatcher (``bitdance_rt.ops.OpSet``): which provider each operation gets, the errors, and every PyTorch
provider function against the Triton launcher of the same name on the same random inputs (same signature, same
result: relative error < 1e-5 in float32, outputs passed as NaN-poisoned ``out`` buffers)."""

from __future__ import annotations

import os

import pytest
import torch

from bitdance_rt.errors import UnsupportedDeviceError
from bitdance_rt.ops import CHAINS, OP_NAMES, OpSet
from bitdance_rt.ops import torch_ops

DEVICE = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
TRITON_HERE = DEVICE.type == "cuda" or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
needs_triton = pytest.mark.skipif(not TRITON_HERE, reason="Triton runs on CUDA or under TRITON_INTERPRET=1")
TOL = 1e-5


def randn(*shape, seed, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(DEVICE, torch.float32)


def nan_like(t):
    return torch.full_like(t, float("nan"))


def close(a, b, tol=TOL):
    a64, b64 = a.double().cpu(), b.double().cpu()
    assert torch.isfinite(a64).all() and torch.isfinite(b64).all()
    err = ((a64 - b64).norm() / b64.norm().clamp_min(1e-30)).item()
    assert err < tol, f"relative error {err:.2e}"


def test_torch_chain_resolves_every_operation_it_has():
    ops = OpSet("cpu", "torch")
    assert set(ops.chosen.values()) == {"torch"}
    missing = [name for name in OP_NAMES if not hasattr(torch_ops, name)]
    assert set(ops.chosen) == set(OP_NAMES) - set(missing)
    assert ops.summary() == dict(sorted(ops.chosen.items()))


@needs_triton
def test_triton_chain_prefers_triton_and_falls_back_to_torch():
    ops = OpSet(DEVICE, "triton")
    assert ops.chosen["block_attention_decode"] == "triton"
    assert set(ops.chosen.values()) <= {"triton", "torch"}


def test_cuda_chain_off_cuda_says_why_and_falls_back():
    ops = OpSet("cpu", "cuda")
    assert "cuda" in ops.skipped and "CUDA devices" in ops.skipped["cuda"]
    assert "cuda" not in ops.chosen.values()


def test_unknown_provider_and_unknown_operation_are_clear_errors():
    with pytest.raises(ValueError, match="unknown provider"):
        OpSet("cpu", ("torch", "fortran"))
    ops = OpSet("cpu", "torch")
    with pytest.raises(AttributeError, match="no operation 'warp_drive'"):
        ops.warp_drive
    with pytest.raises(UnsupportedDeviceError, match="asked of provider 'cuda'"):
        OpSet("cpu", "torch", overrides={"swiglu": "cuda"})
    assert set(CHAINS) == {"cuda", "triton", "torch"}


# ---------------------------------------------------------------------------------- torch provider == Triton
@pytest.fixture(scope="module")
def both():
    if not TRITON_HERE:
        pytest.skip("Triton runs on CUDA or under TRITON_INTERPRET=1")
    return OpSet(DEVICE, "torch"), OpSet(DEVICE, ("triton",))


def test_block_attention_decode_and_prefill(both):
    ref, tri = both
    b, hq, hkv, p, d, length = 2, 4, 2, 4, 16, 32
    q = randn(b, hq, p, d, seed=1)
    keys, values = randn(b, hkv, length, d, seed=2), randn(b, hkv, length, d, seed=3)
    lengths = torch.tensor([5, 17], dtype=torch.int32, device=DEVICE)
    outs = [ops.block_attention_decode(q, keys, values, lengths, 0.25, nan_like(q)) for ops in (ref, tri)]
    close(outs[0], outs[1])
    total = 12
    qp = randn(b, hq, total, d, seed=4)
    lens, causal = (torch.tensor(v, dtype=torch.int32, device=DEVICE) for v in ([12, 9], [8, 5]))
    outs = [ops.block_attention_prefill(qp, keys, values, lens, causal, p, 0.25, nan_like(qp)) for ops in (ref, tri)]
    close(outs[0], outs[1])


@pytest.mark.parametrize("name", ["qk_norm_rope_append", "rope_append_interleaved"])
def test_pre_attention(both, name):
    ref, tri = both
    b, t, hq, hkv, d, length = 2, 4, 4, 2, 16, 24
    qkv = randn(b, t, hq + 2 * hkv, d, seed=5)
    q, k, v = qkv[:, :, :hq], qkv[:, :, hq:hq + hkv], qkv[:, :, hq + hkv:]
    cos, sin = randn(length, d, seed=6), randn(length, d, seed=7)
    lengths = torch.tensor([3, 11], dtype=torch.int32, device=DEVICE)
    results = []
    for ops in (ref, tri):
        kc, vc = randn(b, hkv, length, d, seed=8), randn(b, hkv, length, d, seed=9)
        if name == "qk_norm_rope_append":
            w1, w2 = 1 + 0.1 * randn(d, seed=10), 1 + 0.1 * randn(d, seed=11)
            out = ops.qk_norm_rope_append(q, k, v, w1, w2, 1e-6, cos, sin, kc, vc, lengths,
                                          q_out=torch.full((b, hq, t, d), float("nan"), device=DEVICE))
        else:
            half = randn(length, d // 2, seed=12), randn(length, d // 2, seed=13)
            out = ops.rope_append_interleaved(q, k, v, *half, kc, vc, lengths,
                                              q_out=torch.full((b, hq, t, d), float("nan"), device=DEVICE))
        results.append((out, kc, vc))
    for a, c in zip(results[0], results[1]):
        close(a, c)


def test_norms_and_elementwise(both):
    ref, tri = both
    x, res, w = randn(6, 48, seed=20), randn(6, 48, seed=21), 1 + 0.1 * randn(48, seed=22)
    for style in ("hf", "torch"):
        (y0, r0), (y1, r1) = (ops.rmsnorm_residual(x, res, w, 1e-6, style=style, out=nan_like(x),
                                                   residual_out=nan_like(x)) for ops in (ref, tri))
        close(y0, y1)
        close(r0, r1)
    scale, shift, bias = randn(6, 48, seed=23, scale=0.3), randn(6, 48, seed=24), randn(48, seed=25)
    close(*(ops.layernorm_modulate(x, scale, shift, w, bias, 1e-6, out=nan_like(x)) for ops in (ref, tri)))
    gate, h = randn(6, 48, seed=26), randn(6, 48, seed=27)
    close(*(ops.gated_residual(x, h, gate, out=nan_like(x)) for ops in (ref, tri)))
    ab = randn(6, 96, seed=28)
    close(*(ops.swiglu(ab, out=nan_like(x)) for ops in (ref, tri)))
    qkv = randn(3, 4, 3 * 32, seed=29)
    close(*(ops.patch_attention(qkv, 16, out=torch.full((3, 4, 32), float("nan"), device=DEVICE))
            for ops in (ref, tri)))


def test_packing(both):
    ref, tri = both
    tokens = torch.sign(randn(3, 4, 64, seed=30))
    words = [ops.pack_signs(tokens, out=torch.full((3, 4, 2), -7, dtype=torch.int32, device=DEVICE))
             for ops in (ref, tri)]
    assert torch.equal(words[0], words[1])
    back = [ops.unpack_signs(words[0], torch.float32, out=nan_like(tokens)) for ops in (ref, tri)]
    assert torch.equal(back[0], tokens) and torch.equal(back[1], tokens)


def test_keyed_sampler_step_and_noise(both):
    """The keyed sampler step (noise = sample ``step + 1`` of each row's keys) agrees across providers, per-row
    guidance included, and ``keyed_noise`` is the reference generator's draw."""
    from bitdance_rt.reference.philox_noise import keyed_normal
    from bitdance_rt.reference.sampler import running_times, step_times

    ref, tri = both
    rows, p, c = 3, 4, 32
    x, pred = randn(rows, p, c, seed=40), randn(2 * rows, p, c, seed=41)
    times = step_times(5, 1.0, DEVICE)
    running = running_times(times)
    cfg = torch.tensor([1.5, 3.0, 7.5], device=DEVICE)
    seeds = torch.tensor([7, -3, 2 ** 40], dtype=torch.int64, device=DEVICE)
    ar_steps = torch.tensor([0, 5, 9], dtype=torch.int32, device=DEVICE)
    rows_in = torch.tensor([0, 1, 0], dtype=torch.int32, device=DEVICE)
    outs = [ops.sampler_step_keyed(pred, x, times, running, 2, cfg, True, seeds, ar_steps, rows_in, out=nan_like(x))
            for ops in (ref, tri)]
    close(outs[0], outs[1])
    noise = ref.keyed_noise(seeds, ar_steps, rows_in, 3, p, c, out=nan_like(x))
    assert torch.equal(noise, keyed_normal(seeds, ar_steps, rows_in, 3, p, c))


def test_head_pass_ends(both):
    """``input_projection``, ``final_layer`` and ``final_layer_step`` (guided, per-row cfg, sigmoid output) agree
    across providers."""
    from bitdance_rt.reference.sampler import running_times, step_times

    ref, tri = both
    rows, p, c, d = 3, 4, 32, 80
    sample, noise = randn(rows, p, c, seed=50), randn(rows, p, c, seed=51)
    w_in, b_in = randn(d, c, seed=52, scale=c ** -0.5), randn(d, seed=53, scale=0.1)
    close(*(ops.input_projection(sample, w_in, b_in, 2, out=torch.full((2 * rows * p, d), float("nan"),
                                                                         device=DEVICE)) for ops in (ref, tri)))
    x, mods = randn(2 * rows * p, d, seed=54, scale=2.0), randn(2 * rows * p, 2 * d, seed=55, scale=0.5)
    scale, shift = mods[:, :d], mods[:, d:]
    w, b = randn(c, d, seed=56, scale=d ** -0.5), randn(c, seed=57, scale=0.1)
    close(*(ops.final_layer(x, scale, shift, w, b, 1e-6, True, out=torch.full((2 * rows * p, c), float("nan"),
                                                                             device=DEVICE)) for ops in (ref, tri)))
    times = step_times(5, 1.0, DEVICE)
    running = running_times(times)
    cfg = torch.tensor([1.5, 3.0, 7.5], device=DEVICE)
    close(*(ops.final_layer_step(x, scale, shift, w, b, 1e-6, True, sample, noise, times, running, 2, cfg, True,
                                 out=nan_like(sample)) for ops in (ref, tri)))


def test_bit_linear_reference_provider():
    from bitdance_rt.reference.token_packing import pack_signs_ref

    ops = OpSet("cpu", "torch")
    tokens = torch.sign(torch.randn(5, 64, generator=torch.Generator().manual_seed(50)))
    weight = torch.randn(24, 64, generator=torch.Generator().manual_seed(51))
    bias = torch.randn(24, generator=torch.Generator().manual_seed(52))
    got = ops.bit_linear(pack_signs_ref(tokens), weight, bias, out=torch.full((5, 24), float("nan")))
    close(got, torch.nn.functional.linear(tokens, weight, bias))


def test_capturable_knows_which_reference_functions_read_the_host():
    """A graph can hold the keyed noise drawn by the PyTorch provider, not the PyTorch attention (host lengths)."""
    from bitdance_rt.engine.engine import STEP_OPS

    torch_only = OpSet("cpu", "torch")
    assert not torch_only.capturable(STEP_OPS)
    assert torch_only.capturable(("keyed_noise", "sampler_step_keyed", "swiglu"))
    assert not torch_only.capturable(("block_attention_decode",))
    if TRITON_HERE:
        triton = OpSet(DEVICE, "triton")
        assert triton.chosen["keyed_noise"] == "torch" and triton.capturable(STEP_OPS)
