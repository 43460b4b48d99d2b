"""Both RoPE forms and the patch-raster order helpers against explicit formulas and transformers.

Hand formulas run in float64 element by element; float32 results must agree within the stated tolerances.
The rotate-half tables and rotation must equal transformers' Qwen3 code exactly (torch.equal).
"""

import math

import pytest
import torch
from transformers import Qwen3Config as HFQwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding, apply_rotary_pos_emb

from bitdance_rt.errors import InvalidRequestError
from bitdance_rt.reference.patch_order import from_patch_raster, patch_raster_order, to_patch_raster
from bitdance_rt.reference.rope import apply_interleaved, apply_rotate_half, c2i_rope_tables, rotate_half_tables


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def explicit_patch_raster(grid_h: int, grid_w: int, p: int) -> list[tuple[int, int]]:
    """(row, column) of the token at each generation position, by walking patches then tokens in raster order."""
    cells = []
    for patch_row in range(grid_h // p):
        for patch_col in range(grid_w // p):
            for r in range(p):
                for c in range(p):
                    cells.append((patch_row * p + r, patch_col * p + c))
    return cells


# ---------------------------------------------------------------- rotate-half (Qwen3)

@pytest.mark.parametrize("head_dim,theta", [(16, 1e6), (128, 1e6), (8, 10000.0)])
def test_rotate_half_tables_match_float64_formula(head_dim, theta):
    positions = torch.randint(0, 256, (9,), generator=generator(1))
    cos, sin = rotate_half_tables(positions, head_dim, theta)
    assert cos.dtype == torch.float32 and cos.shape == (9, head_dim)
    for t, pos in enumerate(positions.tolist()):
        for i in range(head_dim):
            angle = pos * theta ** (-(2 * (i % (head_dim // 2))) / head_dim)
            # float32 angles near 256 carry an absolute error of a few 1e-5.
            assert abs(cos[t, i].item() - math.cos(angle)) < 1e-4
            assert abs(sin[t, i].item() - math.sin(angle)) < 1e-4


def test_rotate_half_tables_equal_transformers():
    config = HFQwen3Config(hidden_size=64, num_attention_heads=4, head_dim=16,
                           rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    rotary = Qwen3RotaryEmbedding(config)
    positions = torch.randint(0, 40000, (2, 33), generator=generator(2))
    probe = torch.zeros(1, dtype=torch.float32)
    hf_cos, hf_sin = rotary(probe, positions)
    cos, sin = rotate_half_tables(positions, 16, 1e6)
    assert torch.equal(cos, hf_cos) and torch.equal(sin, hf_sin)
    cos1, sin1 = rotate_half_tables(positions[0], 16, 1e6)
    assert torch.equal(cos1, hf_cos[0]) and torch.equal(sin1, hf_sin[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_apply_rotate_half_equals_transformers(dtype):
    q = torch.randn(2, 4, 7, 16, generator=generator(3)).to(dtype)
    k = torch.randn(2, 2, 7, 16, generator=generator(4)).to(dtype)
    cos, sin = rotate_half_tables(torch.arange(7) + 100, 16, 1e6)
    hf_q, hf_k = apply_rotary_pos_emb(q, k, cos[None].to(dtype), sin[None].to(dtype))
    assert torch.equal(apply_rotate_half(q, cos, sin), hf_q)
    assert torch.equal(apply_rotate_half(k, cos[None], sin[None]), hf_k)


def test_apply_rotate_half_matches_float64_formula():
    x = torch.randn(1, 2, 5, 8, generator=generator(5))
    positions = torch.tensor([0, 3, 17, 64, 200])
    cos, sin = rotate_half_tables(positions, 8, 10000.0)
    out = apply_rotate_half(x, cos, sin)
    for h in range(2):
        for t, pos in enumerate(positions.tolist()):
            for i in range(4):
                angle = pos * 10000.0 ** (-2 * i / 8)
                a, b = x[0, h, t, i].item(), x[0, h, t, i + 4].item()
                expected_first = a * math.cos(angle) - b * math.sin(angle)
                expected_second = b * math.cos(angle) + a * math.sin(angle)
                assert abs(out[0, h, t, i].item() - expected_first) < 1e-4
                assert abs(out[0, h, t, i + 4].item() - expected_second) < 1e-4


# ---------------------------------------------------------------- interleaved 2-D (class-conditional)

@pytest.mark.parametrize("grid,head_dim,prefix,patch", [(16, 64, 64, 1), (16, 64, 67, 2), (8, 32, 5, 4)])
def test_c2i_tables_match_float64_formula(grid, head_dim, prefix, patch):
    cos, sin = c2i_rope_tables(grid, head_dim, prefix, patch)
    pairs = head_dim // 2
    assert cos.dtype == torch.float32 and cos.shape == (prefix + grid * grid, pairs)
    cells = explicit_patch_raster(grid, grid, patch)
    for n, (row, col) in enumerate(cells):
        x, y = col + 0.5, row + 0.5
        for j in range(pairs):
            quarter = j % (pairs // 2)
            freq = 10000.0 ** (-(2 * quarter) / pairs)
            angle = (x + 1) * freq if j < pairs // 2 else (y + 1) * freq
            # angles stay below grid + 1.5, so float32 is good to ~1e-6.
            assert abs(cos[prefix + n, j].item() - math.cos(angle)) < 1e-5
            assert abs(sin[prefix + n, j].item() - math.sin(angle)) < 1e-5


def test_c2i_prefix_tokens_have_zero_angle():
    cos, sin = c2i_rope_tables(16, 64, 67, 2)
    assert torch.equal(cos[:67], torch.ones(67, 32))
    assert torch.equal(sin[:67], torch.zeros(67, 32))
    assert not torch.equal(sin[67], torch.zeros(32))


def test_c2i_patch_order_permutes_raster_table():
    raster_cos, raster_sin = c2i_rope_tables(16, 64, 3, 1)
    cos, sin = c2i_rope_tables(16, 64, 3, 4)
    order = patch_raster_order(16, 16, 4)
    assert torch.equal(cos[3:], raster_cos[3:][order]) and torch.equal(sin[3:], raster_sin[3:][order])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_apply_interleaved_matches_float64_formula(dtype):
    cos, sin = c2i_rope_tables(4, 8, 2, 2)
    x = torch.randn(2, 18, 3, 8, generator=generator(6)).to(dtype)
    out = apply_interleaved(x, cos, sin)
    assert out.dtype == dtype and out.shape == x.shape
    cells = explicit_patch_raster(4, 4, 2)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2  # bf16 output rounding
    for b in range(2):
        for t in range(18):
            row, col = cells[t - 2] if t >= 2 else (None, None)
            for h in range(3):
                for i in range(4):
                    if row is None:
                        angle = 0.0
                    else:
                        freq = 10000.0 ** (-(2 * (i % 2)) / 4)
                        angle = (col + 1.5) * freq if i < 2 else (row + 1.5) * freq
                    even, odd = x[b, t, h, 2 * i].double().item(), x[b, t, h, 2 * i + 1].double().item()
                    expected_even = even * math.cos(angle) - odd * math.sin(angle)
                    expected_odd = odd * math.cos(angle) + even * math.sin(angle)
                    assert abs(out[b, t, h, 2 * i].double().item() - expected_even) < tolerance
                    assert abs(out[b, t, h, 2 * i + 1].double().item() - expected_odd) < tolerance


def test_rope_rejects_bad_sizes():
    with pytest.raises(InvalidRequestError, match="divisible by 4"):
        c2i_rope_tables(16, 62, 1, 1)
    with pytest.raises(InvalidRequestError, match="even head_dim"):
        rotate_half_tables(torch.arange(3), 15, 1e6)
    with pytest.raises(InvalidRequestError, match="cos/sin of shape"):
        apply_interleaved(torch.zeros(1, 5, 2, 8), *c2i_rope_tables(2, 8, 0, 1))


# ---------------------------------------------------------------- patch-raster order

@pytest.mark.parametrize("grid_h,grid_w,p", [(16, 16, 1), (16, 16, 2), (16, 16, 4), (8, 12, 4), (64, 16, 8)])
def test_patch_raster_order_matches_explicit_loop(grid_h, grid_w, p):
    expected = [row * grid_w + col for row, col in explicit_patch_raster(grid_h, grid_w, p)]
    order = patch_raster_order(grid_h, grid_w, p)
    assert order.dtype == torch.int64 and order.tolist() == expected


@pytest.mark.parametrize("grid_h,grid_w,p", [(16, 16, 1), (8, 12, 2), (32, 48, 4), (16, 8, 8)])
def test_patch_raster_maps_match_explicit_loop_and_round_trip(grid_h, grid_w, p):
    grid = torch.randn(2, 5, grid_h, grid_w, generator=generator(7))
    sequence = to_patch_raster(grid, grid_h, grid_w, p)
    assert sequence.shape == (2, grid_h * grid_w, 5)
    # The T2I decoder's 'b (h w p1 p2) c -> b c (h p1) (w p2)' places token n at the n-th explicit cell.
    for n, (row, col) in enumerate(explicit_patch_raster(grid_h, grid_w, p)):
        assert torch.equal(sequence[:, n], grid[:, :, row, col])
    assert torch.equal(from_patch_raster(sequence, grid_h, grid_w, p), grid)
    tokens = torch.randn(3, grid_h * grid_w, 4, generator=generator(8))
    assert torch.equal(to_patch_raster(from_patch_raster(tokens, grid_h, grid_w, p), grid_h, grid_w, p), tokens)


def test_patch_raster_rejects_bad_shapes():
    with pytest.raises(InvalidRequestError, match="not divisible"):
        patch_raster_order(10, 16, 4)
    with pytest.raises(InvalidRequestError, match="expected a tensor"):
        to_patch_raster(torch.zeros(1, 2, 8, 8), 8, 16, 2)
    with pytest.raises(InvalidRequestError, match="expected a tensor"):
        from_patch_raster(torch.zeros(1, 63, 2), 8, 8, 2)
