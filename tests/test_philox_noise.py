"""The keyed sampler noise (``reference/philox_noise.py``): Philox 4x32-10 against published known answers, the
element layout against a scalar re-derivation of the docstring's definition, and the statistics of the normals.

Statistical bounds are 5 standard errors (a false alarm about once in 3.5 million runs per check) and p-values
are rejected below 1e-4; every sample is drawn with fixed keys, so the outcome is the same on every run.
"""

from __future__ import annotations

import math

import pytest
import torch

from bitdance_rt.reference.philox_noise import (MASK32, NOISE_STREAM_TAG, box_muller, keyed_normal, noise_stack,
                                                philox4x32_10)

SIGMAS = 5.0
P_REJECT = 1e-4

# Random123's published vectors (counter, key, output) for Philox 4x32-10
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((MASK32,) * 4, (MASK32, MASK32), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def int_tensor(values, dtype=torch.int32) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


def random_keys(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeds over the whole int64 range, AR steps < 4096, rows in request < 16."""
    gen = torch.Generator().manual_seed(seed)
    seeds = torch.randint(-2 ** 63, 2 ** 63 - 1, (batch,), generator=gen, dtype=torch.int64)
    ar_steps = torch.randint(0, 4096, (batch,), generator=gen, dtype=torch.int32)
    rows = torch.randint(0, 16, (batch,), generator=gen, dtype=torch.int32)
    return seeds, ar_steps, rows


@pytest.mark.parametrize("counter,key,expected", KNOWN_ANSWERS, ids=["zeros", "ones", "pi"])
def test_philox_known_answers(counter, key, expected):
    words = philox4x32_10(counter, key)
    assert tuple(int(w) for w in words) == expected


def test_philox_vectorised_equals_scalar():
    """A batch of counters and keys gives what each gives alone (broadcasting does not mix lanes)."""
    gen = torch.Generator().manual_seed(1)
    counters = [torch.randint(0, 2 ** 32, (64,), generator=gen, dtype=torch.int64) for _ in range(4)]
    keys = [torch.randint(0, 2 ** 32, (64,), generator=gen, dtype=torch.int64) for _ in range(2)]
    batched = torch.stack(philox4x32_10(counters, keys), dim=-1)
    for j in (0, 17, 63):
        alone = philox4x32_10([int(c[j]) for c in counters], [int(k[j]) for k in keys])
        assert [int(w) for w in alone] == batched[j].tolist()


def scalar_normal(seed: int, ar_step: int, row: int, sample_index: int, patch: int, channels: int, p: int,
                  c: int) -> float:
    """One element straight from the docstring's definition, with Python ints and ``math`` (float64)."""
    element = row * patch * channels + p * channels + c
    group, lane = divmod(element, 4)
    words = philox4x32_10((group, sample_index, ar_step & MASK32, NOISE_STREAM_TAG),
                          (seed & MASK32, (seed >> 32) & MASK32))
    w_radius, w_angle = int(words[2 * (lane // 2)]), int(words[2 * (lane // 2) + 1])
    radius = math.sqrt(-2.0 * math.log(((w_radius >> 8) + 1) / 2 ** 24))
    angle = 2.0 * math.pi * (w_angle >> 8) / 2 ** 24
    return radius * (math.cos(angle) if lane % 2 == 0 else math.sin(angle))


@pytest.mark.parametrize("patch,channels", [(4, 32), (3, 5), (1, 1)], ids=["aligned", "unaligned", "one"])
def test_keyed_normal_follows_definition(patch, channels):
    """Every element of a few rows (one starting mid-group when P·C is not a multiple of 4) equals the scalar
    re-derivation rounded to float32; a negative seed uses its two's-complement words."""
    seeds = int_tensor([12345, -7, 2 ** 40 + 3], torch.int64)
    ar_steps = int_tensor([0, 5, 1023])
    rows = int_tensor([0, 3, 1])
    got = keyed_normal(seeds, ar_steps, rows, 7, patch, channels)
    assert got.dtype == torch.float32 and got.shape == (3, patch, channels)
    for b in range(3):
        for p in range(patch):
            for c in range(channels):
                want = scalar_normal(int(seeds[b]), int(ar_steps[b]), int(rows[b]), 7, patch, channels, p, c)
                assert got[b, p, c].item() == torch.tensor(want, dtype=torch.float64).float().item(), (b, p, c)


def test_box_muller_never_takes_log_zero():
    """The extreme words give finite normals: word 0 the largest radius sqrt(48·ln 2), all ones radius 0."""
    words = int_tensor([0, MASK32, 0x80000000], torch.int64)
    z_cos, z_sin = box_muller(words, torch.zeros(3, dtype=torch.int64))
    assert torch.isfinite(z_cos).all() and torch.isfinite(z_sin).all()
    assert z_cos[0].item() == pytest.approx(math.sqrt(48 * math.log(2)), rel=1e-15)
    assert z_cos[1].item() == 0.0 and z_sin.abs().max().item() == 0.0


def million_draws(seed: int) -> torch.Tensor:
    """2^20 normals: 1024 rows of 16 x 64 over random keys, float64."""
    seeds, ar_steps, rows = random_keys(1024, seed)
    return keyed_normal(seeds, ar_steps, rows, 3, 16, 64).reshape(-1).double()


def test_mean_and_variance():
    z = million_draws(seed=2)
    n = z.numel()
    assert abs(z.mean().item()) < SIGMAS / math.sqrt(n)
    assert abs(z.var().item() - 1.0) < SIGMAS * math.sqrt(2.0 / n)   # var of the sample variance: 2/n
    assert torch.isfinite(z).all() and z.abs().max().item() <= math.sqrt(48 * math.log(2)) + 1e-6


def ks_p_value(z: torch.Tensor) -> float:
    """Kolmogorov–Smirnov test of ``z`` against N(0, 1): the asymptotic p-value (Stephens' small-n correction)."""
    n = z.numel()
    cdf = torch.special.ndtr(torch.sort(z).values)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    d = max((i / n - cdf).max().item(), (cdf - (i - 1) / n).max().item())
    lam = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * d
    return min(1.0, max(0.0, 2.0 * sum((-1) ** (k - 1) * math.exp(-2.0 * k * k * lam * lam) for k in range(1, 101))))


def chi_square_p_value(z: torch.Tensor, bins: int = 64) -> float:
    """Chi-square test on ``bins`` equiprobable bins of N(0, 1) (the tails included); p-value from the
    Wilson–Hilferty normal approximation of the chi-square distribution."""
    edges = torch.special.ndtri(torch.arange(1, bins, dtype=torch.float64) / bins)
    counts = torch.bincount(torch.bucketize(z, edges), minlength=bins).double()
    expected = z.numel() / bins
    stat = ((counts - expected) ** 2 / expected).sum().item()
    dof = bins - 1
    wh = ((stat / dof) ** (1.0 / 3.0) - (1.0 - 2.0 / (9.0 * dof))) / math.sqrt(2.0 / (9.0 * dof))
    return 0.5 * math.erfc(wh / math.sqrt(2.0))


def test_normality_of_a_million_draws():
    """KS and a 64-bin chi-square against N(0, 1), each rejected at p < 1e-4; and the tests have power: the same
    draws scaled by 1.02 (KS) or shifted by 0.02 (chi-square) are rejected."""
    z = million_draws(seed=3)
    assert ks_p_value(z) > P_REJECT
    assert chi_square_p_value(z) > P_REJECT
    assert ks_p_value(z * 1.02) < P_REJECT
    assert chi_square_p_value(z + 0.02) < P_REJECT


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.reshape(-1).double(), b.reshape(-1).double()
    return torch.corrcoef(torch.stack([a, b]))[0, 1].item()


@pytest.mark.parametrize("neighbour", ["seed", "ar_step", "sample_index", "row_in_request"])
def test_neighbouring_keys_are_uncorrelated(neighbour):
    """Draws of keys one apart in one field (256 rows x 1024 elements) correlate by less than 5/sqrt(n)."""
    seeds, ar_steps, rows = random_keys(256, seed=4)
    index = 5
    base = keyed_normal(seeds, ar_steps, rows, index, 16, 64)
    if neighbour == "seed":
        other = keyed_normal(seeds + 1, ar_steps, rows, index, 16, 64)
    elif neighbour == "ar_step":
        other = keyed_normal(seeds, ar_steps + 1, rows, index, 16, 64)
    elif neighbour == "sample_index":
        other = keyed_normal(seeds, ar_steps, rows, index + 1, 16, 64)
    else:
        other = keyed_normal(seeds, ar_steps, rows + 1, index, 16, 64)
    assert not torch.equal(base, other)
    assert abs(correlation(base, other)) < SIGMAS / math.sqrt(base.numel())


def test_elements_of_a_group_are_uncorrelated():
    """Within a Philox group: cos/sin of one pair, and the two pairs, correlate by less than 5/sqrt(n); so do
    neighbouring elements across groups."""
    z = million_draws(seed=5).reshape(-1, 4)
    bound = SIGMAS / math.sqrt(z.shape[0])
    for a, b in ((0, 1), (2, 3), (0, 2), (1, 3)):
        assert abs(correlation(z[:, a], z[:, b])) < bound, (a, b)
    assert abs(correlation(z[:-1, 3], z[1:, 0])) < bound
    # Box–Muller pairs are independent, not just uncorrelated: the squares do not correlate either
    assert abs(correlation(z[:, 0] ** 2, z[:, 1] ** 2)) < bound


def test_seed_high_word_matters():
    """Seeds that differ only above bit 32 give different noise (the key uses both words)."""
    seeds = int_tensor([5, 5 + 2 ** 32, 5 - 2 ** 32], torch.int64)
    z = keyed_normal(seeds, int_tensor([1, 1, 1]), int_tensor([0, 0, 0]), 0, 4, 8)
    assert not torch.equal(z[0], z[1]) and not torch.equal(z[0], z[2]) and not torch.equal(z[1], z[2])


@pytest.mark.parametrize("patch,channels", [(16, 32), (3, 7)])
def test_request_noise_independent_of_batch(patch, channels):
    """A request's rows give the same noise alone, in a batch, and after the batch's rows are permuted (with their
    keys); a request's row r is the continuation of its row r − 1 (one noise stream per request)."""
    # three requests: seeds 11 (rows 0-2, AR step 4), 22 (rows 0-1, step 9), 33 (row 0, step 0)
    seeds = int_tensor([11, 22, 11, 33, 22, 11], torch.int64)
    ar_steps = int_tensor([4, 9, 4, 0, 9, 4])
    rows = int_tensor([0, 0, 1, 0, 1, 2])
    batch = keyed_normal(seeds, ar_steps, rows, 2, patch, channels)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(6))
    permuted = keyed_normal(seeds[perm], ar_steps[perm], rows[perm], 2, patch, channels)
    assert torch.equal(permuted, batch[perm])
    alone = keyed_normal(int_tensor([11, 11, 11], torch.int64), int_tensor([4, 4, 4]), int_tensor([0, 1, 2]), 2,
                         patch, channels)
    assert torch.equal(alone, batch[[0, 2, 5]])
    # request 11 as one tall row (rows 0-2 side by side) is the same stream
    tall = keyed_normal(int_tensor([11], torch.int64), int_tensor([4]), int_tensor([0]), 2, 3 * patch, channels)
    assert torch.equal(tall.reshape(3, patch, channels), alone)


def test_noise_stack_layout():
    seeds, ar_steps, rows = random_keys(3, seed=7)
    stack = noise_stack(seeds, ar_steps, rows, 4, 2, 8)
    assert stack.shape == (5, 3, 2, 8) and stack.dtype == torch.float32
    for i in range(5):
        assert torch.equal(stack[i], keyed_normal(seeds, ar_steps, rows, i, 2, 8))
    assert not torch.equal(stack[0], stack[1])


def test_empty_and_errors():
    seeds, ar_steps, rows = random_keys(2, seed=8)
    assert keyed_normal(seeds, ar_steps, rows, 0, 0, 32).shape == (2, 0, 32)
    assert keyed_normal(seeds[:0], ar_steps[:0], rows[:0], 0, 4, 32).shape == (0, 4, 32)
    with pytest.raises(ValueError, match="keyed_normal: seeds must be a 1-D integer tensor"):
        keyed_normal(seeds.double(), ar_steps, rows, 0, 4, 32)
    with pytest.raises(ValueError, match="keyed_normal: ar_steps must be a 1-D integer tensor"):
        keyed_normal(seeds, ar_steps.view(2, 1), rows, 0, 4, 32)
    with pytest.raises(ValueError, match="keyed_normal: seeds, ar_steps and rows_in_request need one entry per row"):
        keyed_normal(seeds, ar_steps, rows[:1], 0, 4, 32)
    with pytest.raises(ValueError, match="keyed_normal: sample_index is -1, expected a Python int >= 0"):
        keyed_normal(seeds, ar_steps, rows, -1, 4, 32)
    with pytest.raises(ValueError, match="noise_stack: num_steps is 2.0"):
        noise_stack(seeds, ar_steps, rows, 2.0, 4, 32)
