"""Block-causal masks of both families as explicit matrices, and as the release builds them.

Small cases are written out literally (1 = may attend). The class-conditional mask is also rebuilt the release's
way (an additive 0 / −inf matrix: causal, then each block of P zeroed on its diagonal square), the text-to-image
one the way its pipeline attends (a causal prefill of the prompt, then per step an all-ones [P, cache + P] mask).
All comparisons are exact.
"""

from __future__ import annotations

import pytest
import torch

from bitdance_rt.reference.masks import C2I_CAUSAL_LEN, block_causal_mask, block_rows, t2i_causal_len


def literal(rows: list[str]) -> torch.Tensor:
    return torch.tensor([[ch == "1" for ch in row] for row in rows], dtype=torch.bool)


def release_c2i_allowed(total: int, causal_len: int, block: int) -> torch.Tensor:
    """The release's additive mask (−inf above the diagonal, 0 on each block's square), as 'may attend'."""
    additive = torch.zeros(total, total)
    additive[torch.ones(total, total).triu(1).bool()] = float("-inf")
    for start in range(causal_len, total, block):
        additive[start:start + block, start:start + block] = 0.0
    return additive == 0


def pipeline_t2i_allowed(prompt_len: int, block: int, num_blocks: int) -> torch.Tensor:
    """Rows as the T2I pipeline attends: causal prefill over prompt + <|vision_start|> + <|res_H|>, then each block
    (the first is <|res_W|> and the queries) sees its whole cache and itself through an all-ones mask."""
    prefill = prompt_len + 2
    total = prefill + block * num_blocks
    allowed = torch.zeros(total, total, dtype=torch.bool)
    allowed[:prefill, :prefill] = torch.ones(prefill, prefill, dtype=torch.bool).tril()
    for start in range(prefill, total, block):
        allowed[start:start + block, :start + block] = True
    return allowed


def test_t2i_three_token_prompt_p4_literal():
    """Prompt of 3 tokens, then <|vision_start|>, <|res_H|>; block 1 = <|res_W|> + 3 queries; block 2 = patch 0."""
    assert t2i_causal_len(3) == 5
    expected = literal([
        "1000000000000",
        "1100000000000",
        "1110000000000",
        "1111000000000",
        "1111100000000",
        "1111111110000",
        "1111111110000",
        "1111111110000",
        "1111111110000",
        "1111111111111",
        "1111111111111",
        "1111111111111",
        "1111111111111",
    ])
    mask = block_causal_mask(13, t2i_causal_len(3), 4)
    assert mask.dtype == torch.bool and mask.shape == (13, 13)
    assert torch.equal(mask, expected)
    assert torch.equal(mask, pipeline_t2i_allowed(3, 4, 2))


@pytest.mark.parametrize("prompt_len,block,num_blocks", [(1, 1, 5), (7, 4, 4), (12, 16, 3), (5, 64, 2)])
def test_t2i_mask_equals_pipeline_attention(prompt_len, block, num_blocks):
    total = t2i_causal_len(prompt_len) + block * num_blocks
    mask = block_causal_mask(total, t2i_causal_len(prompt_len), block)
    assert torch.equal(mask, pipeline_t2i_allowed(prompt_len, block, num_blocks))


def test_c2i_p4_literal_corner_and_release_build():
    """Total 63 + 3·4 = 75: 64 class tokens' first 63 causal, then blocks [63..66], [67..70], [71..74]."""
    assert C2I_CAUSAL_LEN == 63
    mask = block_causal_mask(75, C2I_CAUSAL_LEN, 4)
    corner = literal([   # rows / keys 60..74
        "100000000000000",
        "110000000000000",
        "111000000000000",
        "111111100000000",
        "111111100000000",
        "111111100000000",
        "111111100000000",
        "111111111110000",
        "111111111110000",
        "111111111110000",
        "111111111110000",
        "111111111111111",
        "111111111111111",
        "111111111111111",
        "111111111111111",
    ])
    assert torch.equal(mask[60:, 60:], corner)
    assert mask[60:, :60].all()
    assert torch.equal(mask[:60], torch.ones(75, 75, dtype=torch.bool).tril()[:60])
    assert torch.equal(mask, release_c2i_allowed(75, 63, 4))


@pytest.mark.parametrize("block", [1, 4, 16])
def test_c2i_full_size_mask_equals_release(block):
    """The release's buffer: get_block_causal_mask(256 + 64 − 1, 64 − 1, P) for the 16×16 grid."""
    total = 256 + 64 - 1
    assert torch.equal(block_causal_mask(total, C2I_CAUSAL_LEN, block), release_c2i_allowed(total, 63, block))


@pytest.mark.parametrize("causal_len,total", [(0, 9), (3, 9), (63, 70)])
def test_block_of_one_is_plain_causal(causal_len, total):
    assert torch.equal(block_causal_mask(total, causal_len, 1), torch.ones(total, total, dtype=torch.bool).tril())


def test_whole_sequence_in_blocks():
    """causal_len 0: the sequence is nothing but blocks."""
    expected = literal([
        "110000",
        "110000",
        "111100",
        "111100",
        "111111",
        "111111",
    ])
    assert torch.equal(block_causal_mask(6, 0, 2), expected)


def test_block_rows_t2i_steps_are_all_ones():
    """Every T2I step after the prefill: [P, start + P], all True (the pipeline's all-ones mask)."""
    prompt_len, block = 6, 4
    causal = t2i_causal_len(prompt_len)
    mask = block_causal_mask(causal + 5 * block, causal, block)
    for start in range(causal, causal + 5 * block, block):
        rows = block_rows(mask, start, block)
        assert rows.shape == (block, start + block)
        assert rows.all()
    prefill = block_rows(mask, 0, causal)
    assert torch.equal(prefill, torch.ones(causal, causal, dtype=torch.bool).tril())


@pytest.mark.parametrize("block", [1, 4, 16])
def test_block_rows_c2i_equal_release_slices(block):
    """The release's first call uses rows/keys [0, 63 + P); step i > 0 uses rows [s, s + P), keys [0, s + P) with
    s = P·(i − 1) + 64 + P − 1."""
    total = 256 + 63
    ours = block_causal_mask(total, C2I_CAUSAL_LEN, block)
    release = release_c2i_allowed(total, 63, block)
    first = 64 + block - 1
    assert torch.equal(block_rows(ours, 0, first), release[:first, :first])
    for i in range(1, 256 // block):
        s = block * (i - 1) + 64 + block - 1
        rows = block_rows(ours, s, block)
        assert rows.shape == (block, s + block)
        assert torch.equal(rows, release[s:s + block, :s + block])
        assert rows.all()


def test_block_rows_is_the_slice():
    mask = block_causal_mask(75, 63, 4)
    assert torch.equal(block_rows(mask, 67, 4), mask[67:71, :71])
    assert torch.equal(block_rows(mask, 10, 3), mask[10:13, :13])


@pytest.mark.parametrize("total,causal_len,block", [(76, 63, 4), (14, 5, 4), (10, 0, 3), (8, 2, 0)])
def test_sequence_not_in_whole_blocks_is_an_error(total, causal_len, block):
    with pytest.raises(ValueError, match="whole blocks"):
        block_causal_mask(total, causal_len, block)
