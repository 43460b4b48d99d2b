"""Block-causal patch attention kernels against the dense float64 reference (reference/attention.py).

Every case builds the explicit dense mask (decode_allowed / prefill_allowed) and runs masked_attention on float64
copies; the kernels run in float32 (relative error < 1e-5) through the interpreter, bf16 on a GPU only (< 1e-2).
The cache holds large random garbage beyond every row's valid range, so a leaked key changes the result; outputs
are NaN-poisoned before the launch. Ragged lengths put a block across a 64-key tile boundary.
"""

import pytest
import torch
import torch.nn.functional as F
from kernel_testing import DEVICE, DTYPES, assert_close, poisoned, randn, tolerance

from bitdance_rt.kernels.block_attention import block_attention_decode, block_attention_prefill
from bitdance_rt.reference.attention import decode_allowed, masked_attention, prefill_allowed
from bitdance_rt.reference.masks import C2I_CAUSAL_LEN, block_causal_mask

GARBAGE_SCALE = 30.0  # cache entries outside a row's range: a leak would dominate the softmax


def make_cache(batch, kv_heads, max_len, head_dim, valid_lens, seed, dtype=torch.float32):
    """Keys and values ``[B, Hkv, Lmax, D]``: unit random up to each row's valid length, large garbage after."""
    keys, values = (randn(batch, kv_heads, max_len, head_dim, seed=seed + i, dtype=torch.float64, device="cpu")
                    for i in range(2))
    garbage = torch.arange(max_len)[None, None, :, None] >= torch.tensor(valid_lens)[:, None, None, None]
    keys, values = (torch.where(garbage, x * GARBAGE_SCALE, x) for x in (keys, values))
    return keys.to(DEVICE, dtype), values.to(DEVICE, dtype)


def reference(q, keys, values, allowed, scale):
    return masked_attention(q.double().cpu(), keys.double().cpu(), values.double().cpu(), allowed.cpu(), scale)


def lengths_tensor(values):
    return torch.tensor(values, dtype=torch.int32, device=DEVICE)


# ---- the reference and its masks ----

def test_reference_equals_sdpa_float64():
    q = randn(2, 6, 4, 32, seed=1, dtype=torch.float64, device="cpu")
    keys, values = (randn(2, 2, 20, 32, seed=s, dtype=torch.float64, device="cpu") for s in (2, 3))
    allowed = decode_allowed(torch.tensor([9, 14]), 4, 20)
    expected = F.scaled_dot_product_attention(q, keys.repeat_interleave(3, 1), values.repeat_interleave(3, 1),
                                              attn_mask=allowed, scale=0.3)
    assert torch.allclose(masked_attention(q, keys, values, allowed, 0.3), expected, rtol=1e-12, atol=1e-12)


def test_reference_fully_masked_rows_give_zero():
    q = randn(1, 2, 3, 16, seed=4, dtype=torch.float64, device="cpu")
    keys = randn(1, 1, 5, 16, seed=5, dtype=torch.float64, device="cpu")
    allowed = torch.tensor([[True] * 5, [False] * 5, [True, False, False, False, False]])
    out = masked_attention(q, keys, keys, allowed[None, None], 0.25)
    assert (out[:, :, 1] == 0).all() and torch.isfinite(out).all()
    assert torch.allclose(out[:, :, 2], keys[:, :, 0].expand(1, 2, 16))


def test_masks_from_lengths():
    decode = decode_allowed(torch.tensor([3, 0]), 2, 8)
    assert decode.shape == (2, 1, 2, 8)
    assert torch.equal(decode[:, 0, 0], torch.arange(8)[None, :] < torch.tensor([[5], [2]]))
    # a full row is the model's block-causal mask; a shorter row cuts queries and keys at its length
    full = prefill_allowed(torch.tensor([13, 10]), torch.tensor([5, 5]), 4, 13)
    assert torch.equal(full[0, 0], block_causal_mask(13, 5, 4))
    assert torch.equal(full[1, 0, :10, :10], block_causal_mask(13, 5, 4)[:10, :10])
    assert not full[1, 0, 10:].any() and not full[1, 0, :, 10:].any()


# ---- decode ----

@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("block", [1, 4, 16, 64])
@pytest.mark.parametrize("q_heads,kv_heads", [(10, 2), (3, 3)], ids=["gqa5", "mha"])
def test_decode(block, head_dim, q_heads, kv_heads):
    cached = [37, 126]  # row 1's block crosses the key tile boundary at 128 (for P > 2)
    max_len = 126 + block + 29
    ends = [n + block for n in cached]
    keys, values = make_cache(2, kv_heads, max_len, head_dim, ends, seed=10 * block + head_dim)
    q = randn(2, q_heads, block, head_dim, seed=block + head_dim)
    scale = head_dim ** -0.5
    out = block_attention_decode(q, keys, values, lengths_tensor(cached), scale,
                                 out=poisoned(2, q_heads, block, head_dim))
    expected = reference(q, keys, values, decode_allowed(torch.tensor(cached), block, max_len), scale)
    assert_close(out, expected, 1e-5)


@pytest.mark.parametrize("key_splits", [2, 4])
@pytest.mark.parametrize("block", [4, 64])
def test_decode_key_splits(block, key_splits):
    """Key range cut in splits and merged; row 0's short range leaves later splits empty; a row with no cache."""
    cached = [37, 150, 0]
    max_len = 256  # 4 key tiles
    ends = [n + block for n in cached]
    keys, values = make_cache(3, 2, max_len, 64, ends, seed=20 + block)
    q = randn(3, 10, block, 64, seed=30 + block)
    out = block_attention_decode(q, keys, values, lengths_tensor(cached), 0.125,
                                 out=poisoned(3, 10, block, 64), key_splits=key_splits)
    expected = reference(q, keys, values, decode_allowed(torch.tensor(cached), block, max_len), 0.125)
    assert_close(out, expected, 1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_dtypes(dtype):
    cached = [37, 126]
    keys, values = make_cache(2, 2, 200, 128, [n + 16 for n in cached], seed=40, dtype=dtype)
    q = randn(2, 10, 16, 128, seed=41, dtype=dtype)
    out = block_attention_decode(q, keys, values, lengths_tensor(cached), 128 ** -0.5,
                                 out=poisoned(2, 10, 16, 128, dtype=dtype))
    expected = reference(q, keys, values, decode_allowed(torch.tensor(cached), 16, 200), 128 ** -0.5)
    assert out.dtype == dtype
    assert_close(out, expected, tolerance(dtype))


def test_decode_allocates_output_and_small_head_dim():
    keys, values = make_cache(1, 2, 40, 16, [12], seed=50)
    q = randn(1, 4, 4, 16, seed=51)
    out = block_attention_decode(q, keys, values, lengths_tensor([8]), 0.25)
    assert_close(out, reference(q, keys, values, decode_allowed(torch.tensor([8]), 4, 40), 0.25), 1e-5)


# ---- prefill ----

def check_prefill(q_heads, kv_heads, head_dim, total, lengths, causal_lens, block, max_len, seed, dtype=torch.float32):
    batch = len(lengths)
    keys, values = make_cache(batch, kv_heads, max_len, head_dim, lengths, seed=seed, dtype=dtype)
    q = randn(batch, q_heads, total, head_dim, seed=seed + 7, dtype=dtype)
    scale = head_dim ** -0.5
    out = block_attention_prefill(q, keys, values, lengths_tensor(lengths), lengths_tensor(causal_lens), block,
                                  scale, out=poisoned(batch, q_heads, total, head_dim, dtype=dtype))
    allowed = prefill_allowed(torch.tensor(lengths), torch.tensor(causal_lens), block, total)
    assert_close(out, reference(q, keys[:, :, :total], values[:, :, :total], allowed, scale), tolerance(dtype))
    for row, length in enumerate(lengths):
        assert (out[row, :, length:] == 0).all(), "padding queries must be written as exactly 0"


@pytest.mark.parametrize("head_dim", [64, 128])
def test_prefill_t2i_pattern(head_dim):
    """Prompt (causal) then the first block of P = 16 start tokens; rows of different prompt lengths, padded."""
    block, causal_lens = 16, [31, 77]
    lengths = [n + block for n in causal_lens]
    check_prefill(10, 2, head_dim, 100, lengths, causal_lens, block, max_len=120, seed=60 + head_dim)


@pytest.mark.parametrize("block", [1, 4, 16])
def test_prefill_c2i_pattern(block):
    """63 causal class tokens then blocks of P; row 1 stops inside a block (its last block is cut at its length)."""
    lengths = [C2I_CAUSAL_LEN + 3 * block, C2I_CAUSAL_LEN + block + block // 2 + 1]
    total = C2I_CAUSAL_LEN + 3 * block + 5
    check_prefill(3, 3, 64, total, lengths, [C2I_CAUSAL_LEN] * 2, block, max_len=total + 11, seed=70 + block)


@pytest.mark.parametrize("dtype", DTYPES)
def test_prefill_dtypes(dtype):
    check_prefill(10, 2, 128, 90, [80, 47], [16, 31], 16, max_len=96, seed=80, dtype=dtype)


def test_decode_equals_prefill_rows():
    """The last block of a block-causal sequence: decode over the cache gives the prefill's rows of that block."""
    block, causal_len, total = 4, 21, 33
    keys, values = make_cache(1, 2, 40, 64, [total], seed=90)
    q = randn(1, 10, total, 64, seed=91)
    full = block_attention_prefill(q, keys, values, lengths_tensor([total]), lengths_tensor([causal_len]), block,
                                   0.125)
    step = block_attention_decode(q[:, :, total - block:].contiguous(), keys, values, lengths_tensor([total - block]),
                                  0.125)
    assert_close(step, full[:, :, total - block:], 1e-5)


# ---- launcher errors ----

def launch_args(**override):
    args = dict(q=torch.zeros(2, 10, 4, 64), k_cache=torch.zeros(2, 2, 50, 64), v_cache=torch.zeros(2, 2, 50, 64),
                lengths=torch.zeros(2, dtype=torch.int32), scale=0.125)
    args.update(override)
    return args


@pytest.mark.parametrize("override,message", [
    (dict(q=torch.zeros(2, 10, 64)), "q has shape"),
    (dict(k_cache=torch.zeros(3, 2, 50, 64)), "k_cache has shape"),
    (dict(v_cache=torch.zeros(2, 2, 49, 64)), "v_cache has shape"),
    (dict(k_cache=torch.zeros(2, 3, 50, 64), v_cache=torch.zeros(2, 3, 50, 64)), "not a multiple"),
    (dict(k_cache=torch.zeros(2, 2, 50, 64, dtype=torch.float64)), "k_cache has dtype"),
    (dict(q=torch.zeros(2, 10, 4, 64, dtype=torch.int32)), "q has dtype"),
    (dict(lengths=torch.zeros(2, dtype=torch.int64)), "lengths has dtype"),
    (dict(lengths=torch.zeros(3, dtype=torch.int32)), "lengths has shape"),
    (dict(q=torch.zeros(2, 10, 64, 4).transpose(2, 3)), "must be contiguous"),
    (dict(k_cache=torch.zeros(2, 2, 64, 50).transpose(2, 3)), "must be contiguous"),
    (dict(q=torch.zeros(2, 10, 4, 48), k_cache=torch.zeros(2, 2, 50, 48), v_cache=torch.zeros(2, 2, 50, 48)),
     "head dim 48"),
    (dict(scale=float("nan")), "scale"),
    (dict(q=torch.zeros(2, 10, 60, 64)), "block of 60"),
    (dict(out=torch.zeros(2, 10, 4, 32)), "out has shape"),
])
def test_decode_argument_errors(override, message):
    with pytest.raises(ValueError, match=message):
        block_attention_decode(**launch_args(**override))


@pytest.mark.parametrize("override,message", [
    (dict(causal_lens=torch.zeros(2, dtype=torch.int64)), "causal_lens has dtype"),
    (dict(block=0), "block must be"),
    (dict(q=torch.zeros(2, 10, 51, 64)), "only 50"),
    (dict(out=torch.zeros(2, 10, 4, 64, dtype=torch.float16)), "out has dtype"),
])
def test_prefill_argument_errors(override, message):
    args = launch_args(causal_lens=torch.zeros(2, dtype=torch.int32), block=4)
    args.update(override)
    with pytest.raises(ValueError, match=message):
        block_attention_prefill(**args)


def test_choose_key_splits():
    """Decode key splits from the row count and the multiprocessor count (132 on an H200): few rows get many
    splits (two waves), a full batch none, never a split under ``MIN_KEYS_PER_SPLIT`` keys."""
    from bitdance_rt.kernels.block_attention import MIN_KEYS_PER_SPLIT, choose_key_splits

    assert choose_key_splits(programs=2 * 8, max_len=8192, sm_count=132) == 17      # 14B batch 1: 2 rows x 8 heads
    assert choose_key_splits(programs=32 * 8, max_len=8192, sm_count=132) == 2      # 14B batch 16
    assert choose_key_splits(programs=512 * 12, max_len=272, sm_count=132) == 1     # B-16x batch 256
    assert choose_key_splits(programs=1, max_len=300, sm_count=132) == 300 // MIN_KEYS_PER_SPLIT
    assert choose_key_splits(programs=4, max_len=100, sm_count=132) == 1
