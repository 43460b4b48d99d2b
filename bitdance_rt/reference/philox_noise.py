"""Keyed Gaussian noise for the head's sampler: counter-based (Philox 4x32-10), so a request's noise depends only
on its own seed and position, never on the rows beside it, and a kernel can make it where it is used.

Definition (the CUDA kernels of ``csrc/philox.cuh`` compute the same numbers in float32):

- Each row ``b`` of a sampler batch ``[B, P, C]`` carries ``seed[b]`` (int64, the request's seed),
  ``ar_step[b]`` (int32, the request's AR step) and ``row_in_request[b]`` (int32, which of the request's noise rows
  this is). Rows may belong to different requests at different AR steps (continuous batching).
- ``sample_index`` ``i`` (Python int): 0 is the start sample of the sampling loop, ``s + 1`` the noise of
  sampling step ``s``.
- Element ``(b, p, c)`` is element ``e = row_in_request·P·C + p·C + c`` of its request. Group ``g = e // 4`` holds
  elements ``4g .. 4g + 3``; its four 32-bit words are Philox 4x32-10 of
  key ``(seed mod 2^32, (seed >> 32) mod 2^32)`` (the two's-complement words of the int64 seed) and
  counter ``(g mod 2^32, i mod 2^32, ar_step mod 2^32, NOISE_STREAM_TAG)``.
- Uniforms from a word ``w`` (both exact in float32: 24-bit integers times ``2^-24``):
  ``u_radius = ((w >> 8) + 1)·2^-24`` in ``(0, 1]`` (never 0, so the log is finite; 1 gives radius 0) and
  ``u_angle = (w >> 8)·2^-24`` in ``[0, 1)``.
- Box–Muller on words (0, 1) and (2, 3): ``r = sqrt(−2·ln u_radius(w0))``, elements ``4g, 4g + 1`` are
  ``r·cos(2π·u_angle(w1))``, ``r·sin(2π·u_angle(w1))``; elements ``4g + 2, 4g + 3`` the same from ``(w2, w3)``.
  Here computed in float64 and rounded to float32 once; the kernel uses float32 ``logf``/``sqrt``/``sincospif``
  and lands within a few float32 ulp.

Philox 4x32-10 (Salmon et al., SC'11): 10 rounds of ``(c0, c1, c2, c3) -> (hi(M1·c2) ^ c1 ^ k0, lo(M1·c2),
hi(M0·c0) ^ c3 ^ k1, lo(M0·c0))``, the key ``(k0, k1)`` growing by ``(W0, W1)`` after each round. Here on int64
tensors holding 32-bit values: every 32x32-bit product is split into two 32x16-bit ones so nothing exceeds 2^49.

Shapes: ``keyed_normal(...) -> [B, P, C]`` float32; ``noise_stack(...) -> [N + 1, B, P, C]`` float32 (entry 0
the start sample, entry ``s + 1`` the noise of step ``s``), on the device of ``seeds``.
"""

from __future__ import annotations

import math

import torch

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10
NOISE_STREAM_TAG = 0x0B17DA9C  # counter word 3 of every sampler-noise draw; another use of the same seeds picks
#                                another tag and never meets these draws
ELEMENTS_PER_GROUP = 4         # one Philox call gives the normals of 4 consecutive elements
MASK32 = 0xFFFFFFFF
UNIFORM_BITS = 24              # top bits of a word kept for a uniform: exact in float32

Words = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _mul_hi_lo(multiplier: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of ``multiplier·x`` for 32-bit ``x`` held in int64, without overflow: the
    multiplier's 16-bit halves give partial products below 2^48."""
    part_lo = x * (multiplier & 0xFFFF)
    part_hi = x * (multiplier >> 16)
    low = (part_lo + ((part_hi & 0xFFFF) << 16)) & MASK32
    high = (part_hi + (part_lo >> 16)) >> 16
    return high, low


def philox4x32_10(counter: tuple, key: tuple) -> Words:
    """Philox 4x32-10 of 4 counter words and 2 key words (int64 tensors holding values in [0, 2^32), or Python
    ints; broadcast together). Returns the 4 output words as int64 tensors."""
    c0, c1, c2, c3 = (torch.as_tensor(w, dtype=torch.int64) & MASK32 for w in counter)
    k0, k1 = (torch.as_tensor(w, dtype=torch.int64) & MASK32 for w in key)
    for round_index in range(PHILOX_ROUNDS):
        if round_index:
            k0 = (k0 + PHILOX_W0) & MASK32
            k1 = (k1 + PHILOX_W1) & MASK32
        hi0, lo0 = _mul_hi_lo(PHILOX_M0, c0)
        hi1, lo1 = _mul_hi_lo(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def box_muller(w_radius: torch.Tensor, w_angle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two float64 normals ``(r·cos, r·sin)`` from two words (int64 tensors holding 32-bit values), with the
    documented uniforms; ``|z| <= sqrt(48·ln 2) ≈ 5.77`` (the smallest radius uniform is 2^-24)."""
    scale = 2.0 ** -UNIFORM_BITS
    shift = 32 - UNIFORM_BITS
    u_radius = ((w_radius >> shift) + 1).to(torch.float64) * scale
    u_angle = (w_angle >> shift).to(torch.float64) * scale
    radius = torch.sqrt(-2.0 * torch.log(u_radius))
    angle = (2.0 * math.pi) * u_angle
    return radius * torch.cos(angle), radius * torch.sin(angle)


def _check_keys(seeds: torch.Tensor, ar_steps: torch.Tensor, rows_in_request: torch.Tensor) -> None:
    for name, t in (("seeds", seeds), ("ar_steps", ar_steps), ("rows_in_request", rows_in_request)):
        if not isinstance(t, torch.Tensor) or t.ndim != 1 or t.dtype.is_floating_point or t.dtype == torch.bool:
            got = f"{t.dtype} {list(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"keyed_normal: {name} must be a 1-D integer tensor (one per row), got {got}")
    if not seeds.shape == ar_steps.shape == rows_in_request.shape:
        raise ValueError(f"keyed_normal: seeds, ar_steps and rows_in_request need one entry per row, got lengths "
                         f"{seeds.shape[0]}, {ar_steps.shape[0]}, {rows_in_request.shape[0]}")


def keyed_normal(seeds: torch.Tensor, ar_steps: torch.Tensor, rows_in_request: torch.Tensor, sample_index: int,
                 patch: int, channels: int) -> torch.Tensor:
    """Standard normals ``[B, P, C]`` float32 of sample ``sample_index`` for rows keyed by ``seeds [B]``,
    ``ar_steps [B]`` and ``rows_in_request [B]`` (integer tensors), on ``seeds``' device."""
    _check_keys(seeds, ar_steps, rows_in_request)
    if isinstance(sample_index, bool) or not isinstance(sample_index, int) or sample_index < 0:
        raise ValueError(f"keyed_normal: sample_index is {sample_index!r}, expected a Python int >= 0")
    if patch < 0 or channels < 0:
        raise ValueError(f"keyed_normal: patch and channels must be >= 0, got {patch} and {channels}")
    device = seeds.device
    batch, row_size = seeds.shape[0], patch * channels
    if batch == 0 or row_size == 0:
        return torch.empty(batch, patch, channels, dtype=torch.float32, device=device)
    seeds = seeds.to(device=device, dtype=torch.int64)
    # first element of each row; row_in_request read as an unsigned 32-bit word, as the kernel does
    base = (rows_in_request.to(device=device, dtype=torch.int64) & MASK32) * row_size
    first_group = base // ELEMENTS_PER_GROUP
    num_groups = (row_size + ELEMENTS_PER_GROUP - 1) // ELEMENTS_PER_GROUP + 1  # enough for any row offset
    groups = first_group[:, None] + torch.arange(num_groups, device=device)
    key = ((seeds & MASK32)[:, None], ((seeds >> 32) & MASK32)[:, None])
    words = philox4x32_10((groups, sample_index, ar_steps.to(device=device, dtype=torch.int64)[:, None],
                           NOISE_STREAM_TAG), key)
    z0, z1 = box_muller(words[0], words[1])
    z2, z3 = box_muller(words[2], words[3])
    normals = torch.stack([z0, z1, z2, z3], dim=-1).reshape(batch, num_groups * ELEMENTS_PER_GROUP)
    offset = (base % ELEMENTS_PER_GROUP)[:, None] + torch.arange(row_size, device=device)
    return normals.gather(1, offset).to(torch.float32).reshape(batch, patch, channels)


def noise_stack(seeds: torch.Tensor, ar_steps: torch.Tensor, rows_in_request: torch.Tensor, num_steps: int,
                patch: int, channels: int) -> torch.Tensor:
    """All noise of one AR step's sampling loop, ``[N + 1, B, P, C]`` float32: entry 0 the start sample, entry
    ``s + 1`` the noise of sampling step ``s`` (the layout ``FusedHead.sample`` reads)."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(f"noise_stack: num_steps is {num_steps!r}, expected a Python int >= 0")
    return torch.stack([keyed_normal(seeds, ar_steps, rows_in_request, i, patch, channels)
                        for i in range(num_steps + 1)])
