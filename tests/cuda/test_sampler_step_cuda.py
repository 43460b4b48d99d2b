"""The CUDA sampler operators (``csrc/sampler_step.cu``) against the PyTorch references and the Triton kernels.

- ``keyed_noise`` vs ``reference.philox_noise.keyed_normal`` (float64 Box–Muller rounded once): elementwise
  ``|got − ref| <= 1e-6·|ref| + 1e-9`` (1e-6 is about 8 float32 ulp; logf, sincospif and the products are each
  within 1 ulp; the 1e-9 covers the zero crossings of cos/sin, where float64's rounded 2π differs from
  sincospif's exact angle), and at least half of the elements bitwise equal.
- ``sampler_step_keyed`` bitwise the Triton ``sampler_step`` and the torch float32 reference on CUDA, both fed the
  kernel's own noise (``keyed_noise`` of sample ``step + 1``: the same device function); within 1e-6 of the
  torch reference fed the float64 reference noise; within the Triton tests' tolerance (1e-5 float32, 1e-2 bf16) of
  float64 formulas.
- ``sampler_final``: tokens, packed words and sample bitwise the Triton ``sampler_final``.
- Per-row guidance scales, rows moved to other batch positions (a request's noise follows its keys), in-place
  update, capture and replay in a CUDA graph, the statistics of a million in-kernel draws (the CPU test's bounds:
  5 standard errors, KS and chi-square p > 1e-4), and the host-side argument checks.
Outputs are NaN-poisoned before every launch. Skipped without a CUDA device.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent.parent / "kernels")]

from kernel_testing import DTYPES, assert_close, poisoned, randn, tolerance  # noqa: E402
from test_philox_noise import P_REJECT, SIGMAS, chi_square_p_value, ks_p_value  # noqa: E402
from test_sampler_step import step_f64  # noqa: E402

from bitdance_rt import cuda_ext  # noqa: E402
from bitdance_rt.reference.philox_noise import keyed_normal  # noqa: E402
from bitdance_rt.reference.sampler import (final_step_from_prediction, running_times, step_from_prediction,  # noqa
                                           step_times)
from bitdance_rt.reference.token_packing import pack_signs_ref  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA kernels need a CUDA device")

NOISE_RTOL = 1e-6
NOISE_ATOL = 1e-9
MIN_BITWISE_FRACTION = 0.5
STEP_TOL = 1e-6   # vs the torch float32 reference step, as the Triton test
PRED_DTYPES = [*DTYPES, pytest.param(torch.float16, id="fp16")]


@pytest.fixture(scope="module", autouse=True)
def extension():
    """Build/load the extension once; on a CUDA machine a failed build is a failure, not a skip."""
    if not cuda_ext.load_extension():
        pytest.fail(f"the CUDA extension did not load: {cuda_ext.status()}")
    if not cuda_ext.has_op("sampler_step_keyed"):
        pytest.fail("the CUDA extension has no sampler_step_keyed: csrc/sampler_step.cu was not built")


def cuda_ops():
    from bitdance_rt.cuda_ops import sampler_step as ops
    return ops


def triton_ops():
    from bitdance_rt.kernels import sampler_step as ops
    return ops


def random_keys(batch: int, seed: int, max_rows: int = 8):
    """Seeds over the int64 range, AR steps < 4096, rows in request < max_rows; CUDA tensors."""
    gen = torch.Generator().manual_seed(seed)
    seeds = torch.randint(-2 ** 63, 2 ** 63 - 1, (batch,), generator=gen, dtype=torch.int64)
    ar_steps = torch.randint(0, 4096, (batch,), generator=gen, dtype=torch.int32)
    rows = torch.randint(0, max_rows, (batch,), generator=gen, dtype=torch.int32)
    return seeds.cuda(), ar_steps.cuda(), rows.cuda()


def step_inputs(batch: int, patch: int, channels: int, guided: bool, dtype: torch.dtype, seed: int):
    """x ~ N(0, 1) float32; pred in (−1, 1)-ish in the head's dtype (as the Triton test)."""
    x = randn(batch, patch, channels, seed=seed, device="cuda")
    pred = randn(batch * (2 if guided else 1), patch, channels, seed=seed + 2, scale=0.5, dtype=dtype, device="cuda")
    return pred, x


def guidance(kind: str, batch: int, seed: int):
    if kind == "float":
        return 4.0
    if kind == "one":
        return torch.tensor([3.25], device="cuda")
    gen = torch.Generator().manual_seed(seed)
    return (1.0 + 4.0 * torch.rand(batch, generator=gen)).cuda()


def assert_noise_close(got: torch.Tensor, ref: torch.Tensor) -> None:
    assert torch.isfinite(got).all(), "non-finite (unwritten?) noise"
    got64, ref64 = got.double().cpu(), ref.double().cpu()
    excess = (got64 - ref64).abs() - (NOISE_RTOL * ref64.abs() + NOISE_ATOL)
    assert excess.max().item() <= 0, f"noise off the reference by more than {NOISE_RTOL:.0e}·|ref| + " \
                                     f"{NOISE_ATOL:.0e} at {int((excess > 0).sum())} elements"
    bitwise = (got.cpu() == ref.cpu()).double().mean().item()
    assert bitwise >= MIN_BITWISE_FRACTION, f"only {bitwise:.1%} of the noise is bitwise the reference"


@pytest.mark.parametrize("batch,patch,channels", [(37, 16, 32), (5, 3, 5), (3, 1, 1), (2, 64, 32)])
@pytest.mark.parametrize("sample_index", [0, 1, 50, 2 ** 32 - 1])
def test_keyed_noise_matches_reference(batch, patch, channels, sample_index):
    keys = random_keys(batch, seed=batch * 7 + patch)
    out = poisoned(batch, patch, channels, device="cuda")
    got = cuda_ops().keyed_noise(*keys, sample_index, patch, channels, out=out)
    assert got.data_ptr() == out.data_ptr()
    assert_noise_close(got, keyed_normal(*(k.cpu() for k in keys), sample_index, patch, channels))


def test_keyed_noise_on_gpu_reference_and_allocation():
    """The reference run on the GPU gives the same float32 noise as on the CPU; the launcher allocates ``out``."""
    keys = random_keys(16, seed=3)
    got = cuda_ops().keyed_noise(*keys, 2, 8, 32)
    ref_gpu = keyed_normal(*keys, 2, 8, 32)
    assert ref_gpu.is_cuda and torch.equal(ref_gpu.cpu(), keyed_normal(*(k.cpu() for k in keys), 2, 8, 32))
    assert_noise_close(got, ref_gpu)


@pytest.mark.parametrize("dtype", PRED_DTYPES)
@pytest.mark.parametrize("guided", [True, False], ids=["guided", "unguided"])
@pytest.mark.parametrize("cfg_kind", ["float", "one", "per_row"])
@pytest.mark.parametrize("batch,patch,channels,step,num_steps", [(9, 16, 32, 1, 50), (4, 3, 5, 6, 7),
                                                                 (33, 64, 32, 0, 10)])
def test_step_matches_triton_and_reference(dtype, guided, cfg_kind, batch, patch, channels, step, num_steps):
    pred, x = step_inputs(batch, patch, channels, guided, dtype, seed=10 + step)
    keys = random_keys(batch, seed=11 + step)
    cfg = guidance(cfg_kind, batch, seed=12)
    times = step_times(num_steps, 3.0 if num_steps == 7 else 1.0, "cuda")
    running = running_times(times)
    out = cuda_ops().sampler_step_keyed(pred, x, times, running, step, cfg, guided, *keys,
                                         out=poisoned(batch, patch, channels, device="cuda"))
    kernel_noise = cuda_ops().keyed_noise(*keys, step + 1, patch, channels)
    triton = triton_ops().sampler_step(pred, x, kernel_noise, times, running, step, cfg, guided)
    assert torch.equal(out, triton), f"{(out != triton).sum().item()} elements differ from the Triton step"
    dt32 = times[step + 1] - times[step]
    reference = step_from_prediction(pred, x, running[step], dt32, kernel_noise, cfg, guided)
    assert torch.equal(out, reference), f"{(out != reference).sum().item()} elements differ from the torch step"
    assert_close(out, cuda_ops().sampler_step_keyed_reference(pred, x, times, running, step, cfg, guided, *keys),
                 STEP_TOL)
    if cfg_kind != "per_row":
        scale = cfg if isinstance(cfg, float) else cfg.item()
        t, dt = running[step].item(), dt32.item()
        assert_close(out, step_f64(pred, x, kernel_noise, t, dt, scale, guided), tolerance(dtype))


def test_step_in_place_and_rows_independent_of_neighbours():
    """``out=x`` updates in place; rows moved to other batch positions with their keys, and a request's rows
    stepped alone, give the same results bit for bit."""
    batch, patch, channels = 12, 16, 32
    pred, x = step_inputs(batch, patch, channels, True, torch.bfloat16, seed=20)
    keys = random_keys(batch, seed=21, max_rows=3)
    cfg = guidance("per_row", batch, seed=22)
    times = step_times(20, 1.0, "cuda")
    running = running_times(times)
    ops = cuda_ops()
    expected = ops.sampler_step_keyed(pred, x, times, running, 4, cfg, True, *keys)
    x_copy = x.clone()
    assert ops.sampler_step_keyed(pred, x_copy, times, running, 4, cfg, True, *keys, out=x_copy).data_ptr() == \
        x_copy.data_ptr()
    assert torch.equal(x_copy, expected)
    perm = torch.randperm(batch, generator=torch.Generator().manual_seed(23)).cuda()
    pred_perm = torch.cat([pred[:batch][perm], pred[batch:][perm]])
    moved = ops.sampler_step_keyed(pred_perm, x[perm], times, running, 4, cfg[perm], True,
                                    *(k[perm] for k in keys))
    assert torch.equal(moved, expected[perm])
    rows = torch.tensor([2, 7], device="cuda")
    alone = ops.sampler_step_keyed(torch.cat([pred[rows], pred[batch + rows]]), x[rows], times, running, 4,
                                    cfg[rows], True, *(k[rows] for k in keys))
    assert torch.equal(alone, expected[rows])
    noise = ops.keyed_noise(*keys, 5, patch, channels)
    assert torch.equal(ops.keyed_noise(*(k[perm] for k in keys), 5, patch, channels), noise[perm])


@pytest.mark.parametrize("dtype", PRED_DTYPES)
@pytest.mark.parametrize("guided", [True, False], ids=["guided", "unguided"])
@pytest.mark.parametrize("cfg_kind", ["float", "per_row"])
@pytest.mark.parametrize("patch,channels,pack", [(16, 64, True), (16, 32, True), (16, 24, False), (3, 5, False)])
def test_final_matches_triton(dtype, guided, cfg_kind, patch, channels, pack):
    """Tokens (pred's dtype and float32), packed words and the sample bitwise the Triton ``sampler_final``, and
    the sample within 1e-6 of the torch reference; 37 rows cross several warps and blocks; 3 x 5 channels (a
    count not a multiple of 4) take the element-wise kernel."""
    batch = 37
    pred, x = step_inputs(batch, patch, channels, guided, dtype, seed=40 + channels)
    cfg = guidance(cfg_kind, batch, seed=41)
    rows = pred.shape[0]
    for tokens_dtype in (dtype, torch.float32):
        got = cuda_ops().sampler_final(
            pred, x, cfg, guided, tokens_out=poisoned(rows, patch, channels, dtype=tokens_dtype, device="cuda"),
            packed_out=poisoned(rows, patch, channels // 32, dtype=torch.int32, device="cuda") if pack else None,
            sample_out=poisoned(batch, patch, channels, device="cuda"))
        want = triton_ops().sampler_final(pred, x, cfg, guided, tokens_dtype=tokens_dtype, pack=pack,
                                          keep_sample=True)
        assert got.tokens.dtype == tokens_dtype and torch.equal(got.tokens, want.tokens)
        assert torch.equal(got.sample, want.sample)
        if pack:
            assert torch.equal(got.packed, want.packed)
            assert torch.equal(got.packed, pack_signs_ref(torch.cat([got.sample] * (2 if guided else 1))))
        else:
            assert got.packed is None
    assert_close(got.sample, final_step_from_prediction(pred, x, cfg, guided), STEP_TOL)


def offset_copy(t: torch.Tensor) -> torch.Tensor:
    """The same values in a contiguous tensor whose data starts one element past an aligned address."""
    buffer = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    view = buffer[1:].view(t.shape)
    view.copy_(t)
    return view


def test_unaligned_tensors_take_the_element_path():
    """Tensors whose data is not 16-byte aligned (views one element into a buffer) give bitwise the results of
    aligned ones (the 4-wide loads and stores are skipped for them)."""
    ops = cuda_ops()
    batch, patch, channels = 10, 16, 32
    pred, x = step_inputs(batch, patch, channels, True, torch.bfloat16, seed=50)
    keys = random_keys(batch, seed=51)
    cfg = guidance("per_row", batch, seed=52)
    times = step_times(8, 1.0, "cuda")
    running = running_times(times)
    noise = ops.keyed_noise(*keys, 3, patch, channels)
    assert torch.equal(ops.keyed_noise(*keys, 3, patch, channels, out=offset_copy(poisoned(*x.shape))), noise)
    step = ops.sampler_step_keyed(pred, x, times, running, 2, cfg, True, *keys)
    moved = ops.sampler_step_keyed(offset_copy(pred), offset_copy(x), times, running, 2, cfg, True, *keys,
                                    out=offset_copy(poisoned(*x.shape)))
    assert torch.equal(moved, step)
    final = ops.sampler_final(pred, x, cfg, True, pack=True, keep_sample=True)
    moved = ops.sampler_final(offset_copy(pred), offset_copy(x), cfg, True,
                              tokens_out=offset_copy(poisoned(*pred.shape, dtype=pred.dtype)),
                              packed_out=offset_copy(poisoned(2 * batch, patch, 1, dtype=torch.int32)),
                              sample_out=offset_copy(poisoned(*x.shape)))
    assert all(torch.equal(a, b) for a, b in zip(moved, final))


def test_final_defaults_zero_sample_and_last_step_size():
    """No outputs given: tokens in pred's dtype only; an exact 0.0 sample gives token 0 and a clear bit;
    last_step_size 0.1 equals the Triton kernel's."""
    ops = cuda_ops()
    pred, x = step_inputs(2, 4, 32, True, torch.float32, seed=60)
    x[1, 2, 7] = 0.0
    pred[1, 2, 7] = 0.0
    pred[3, 2, 7] = 0.0
    plain = ops.sampler_final(pred, x, 2.0, True)
    assert plain.packed is None and plain.sample is None and plain.tokens.dtype == torch.float32
    got = ops.sampler_final(pred, x, 2.0, True, pack=True, keep_sample=True)
    assert got.sample[1, 2, 7].item() == 0.0
    assert got.tokens[1, 2, 7].item() == 0.0 and got.tokens[3, 2, 7].item() == 0.0
    assert (got.packed[1, 2, 0].item() >> 7) & 1 == 0 and torch.equal(plain.tokens, got.tokens)
    got = ops.sampler_final(pred, x, 2.5, True, last_step_size=0.1, keep_sample=True)
    want = triton_ops().sampler_final(pred, x, 2.5, True, last_step_size=0.1, keep_sample=True)
    assert torch.equal(got.sample, want.sample) and torch.equal(got.tokens, want.tokens)


def test_graph_capture_and_replay():
    """The step, the start sample and the final step captured in a CUDA graph: replays after new keys, a new scale
    and a new x are copied into the static inputs equal eager calls."""
    ops = cuda_ops()
    batch, patch, channels = 8, 16, 32
    pred, x = step_inputs(batch, patch, channels, True, torch.bfloat16, seed=70)
    keys = random_keys(batch, seed=71)
    cfg = guidance("per_row", batch, seed=72)
    times = step_times(10, 1.0, "cuda")
    running = running_times(times)
    start, new_x = torch.empty_like(x), torch.empty_like(x)
    tokens = torch.empty_like(pred)
    words = torch.empty(2 * batch, patch, 1, dtype=torch.int32, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (loads the extension's kernels) off the capture
        ops.keyed_noise(*keys, 0, patch, channels, out=start)
        ops.sampler_step_keyed(pred, x, times, running, 3, cfg, True, *keys, out=new_x)
        ops.sampler_final(pred, new_x, cfg, True, tokens_out=tokens, packed_out=words)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ops.keyed_noise(*keys, 0, patch, channels, out=start)
        ops.sampler_step_keyed(pred, x, times, running, 3, cfg, True, *keys, out=new_x)
        ops.sampler_final(pred, new_x, cfg, True, tokens_out=tokens, packed_out=words)
    for round_seed in (73, 74):
        for static, fresh in zip(keys, random_keys(batch, seed=round_seed)):
            static.copy_(fresh)
        cfg.copy_(guidance("per_row", batch, seed=round_seed))
        x.copy_(randn(batch, patch, channels, seed=round_seed, device="cuda"))
        for buffer in (start, new_x, tokens):
            buffer.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(start, ops.keyed_noise(*keys, 0, patch, channels))
        eager = ops.sampler_step_keyed(pred, x, times, running, 3, cfg, True, *keys)
        assert torch.equal(new_x, eager)
        final = ops.sampler_final(pred, eager, cfg, True, pack=True)
        assert torch.equal(tokens, final.tokens) and torch.equal(words, final.packed)


def test_noise_statistics_of_a_million_draws():
    """In-kernel noise over random keys (1024 rows x 16 x 64 = 2^20 draws): mean and variance within 5 standard
    errors, KS and chi-square against N(0, 1) not rejected at p < 1e-4, neighbouring sample indices uncorrelated."""
    keys = random_keys(1024, seed=80, max_rows=64)
    z = cuda_ops().keyed_noise(*keys, 9, 16, 64).reshape(-1).double().cpu()
    n = z.numel()
    assert abs(z.mean().item()) < SIGMAS / math.sqrt(n)
    assert abs(z.var().item() - 1.0) < SIGMAS * math.sqrt(2.0 / n)
    assert ks_p_value(z) > P_REJECT and chi_square_p_value(z) > P_REJECT
    nxt = cuda_ops().keyed_noise(*keys, 10, 16, 64).reshape(-1).double().cpu()
    assert abs(torch.corrcoef(torch.stack([z, nxt]))[0, 1].item()) < SIGMAS / math.sqrt(n)


def test_launcher_errors_on_cuda():
    ops = cuda_ops()
    pred, x = step_inputs(2, 4, 32, True, torch.float32, seed=90)
    keys = random_keys(2, seed=91)
    times = step_times(5, 1.0, "cuda")
    running = running_times(times)
    with pytest.raises(ValueError, match=r"sampler_step_keyed: seeds has dtype torch.int32, expected torch.int64"):
        ops.sampler_step_keyed(pred, x, times, running, 0, 2.0, True, keys[0].int(), *keys[1:])
    with pytest.raises(ValueError, match=r"sampler_step_keyed: ar_steps has shape \[3\], expected \[2\]"):
        ops.sampler_step_keyed(pred, x, times, running, 0, 2.0, True, keys[0], torch.zeros(3, dtype=torch.int32,
                                device="cuda"), keys[2])
    with pytest.raises(ValueError, match="sampler_step_keyed: rows_in_request is on cpu"):
        ops.sampler_step_keyed(pred, x, times, running, 0, 2.0, True, *keys[:2], keys[2].cpu())
    with pytest.raises(ValueError, match=r"sampler_step_keyed: step is 5, expected a Python int in \[0, 5\)"):
        ops.sampler_step_keyed(pred, x, times, running, 5, 2.0, True, *keys)
    with pytest.raises(ValueError, match=r"sampler_step_keyed: cfg has shape \[3\], expected \[1\]"):
        ops.sampler_step_keyed(pred, x, times, running, 0, torch.ones(3, device="cuda"), True, *keys)
    with pytest.raises(ValueError, match=r"keyed_noise: out has shape \[2, 4, 32\], expected \[2, 4, 16\]"):
        ops.keyed_noise(*keys, 0, 4, 16, out=torch.empty(2, 4, 32, device="cuda"))
    with pytest.raises(ValueError, match="sampler_final: packing needs a channel count"):
        ops.sampler_final(*step_inputs(2, 4, 48, True, torch.float32, seed=92), 2.0, True, pack=True)


def test_operator_checks_without_the_launcher():
    """The C++ host checks catch what a caller of ``torch.ops.bitdance_rt`` passes wrong."""
    op = torch.ops.bitdance_rt
    pred, x = step_inputs(2, 4, 32, True, torch.float32, seed=95)
    keys = random_keys(2, seed=96)
    times = step_times(5, 1.0, "cuda")
    running = running_times(times)
    cfg = torch.ones(1, device="cuda")
    out = torch.empty_like(x)
    with pytest.raises(RuntimeError, match="keyed_noise: seeds has dtype Int, expected Long"):
        op.keyed_noise(keys[0].int(), keys[1], keys[2], 0, out)
    with pytest.raises(RuntimeError, match="keyed_noise: sample_index is -1"):
        op.keyed_noise(*keys, -1, out)
    with pytest.raises(RuntimeError, match=r"sampler_step_keyed: pred has shape \[4, 4, 32\], expected \[2, 4, 32\]"):
        op.sampler_step_keyed(pred, x, times, running, 0, cfg, False, *keys, out)
    with pytest.raises(RuntimeError, match=r"sampler_step_keyed: step is 7, expected \[0, 5\)"):
        op.sampler_step_keyed(pred, x, times, running, 7, cfg, True, *keys, out)
    with pytest.raises(RuntimeError, match="sampler_step_keyed: x must be contiguous"):
        op.sampler_step_keyed(pred, x.transpose(1, 2).contiguous().transpose(1, 2), times, running, 0, cfg, True,
                               *keys, out)
    with pytest.raises(RuntimeError, match="sampler_final: words has shape"):
        op.sampler_final(pred, x, cfg, True, 0.05, torch.empty_like(pred),
                                torch.empty(2, 4, 1, dtype=torch.int32, device="cuda"), None)
