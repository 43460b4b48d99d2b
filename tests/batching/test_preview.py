"""Previews: the decoder's image of the tokens made so far, the rest filled with 0 (the neutral value between -1 and
+1); the final preview is the result's image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bitdance_rt import InvalidRequestError

from batching_helpers import c2i_runtime, run_until_done, steps

P = 16


@pytest.fixture(scope="module")
def rt(c2i16_files, single_thread):
    return c2i_runtime(c2i16_files, max_batch=4)


def test_preview_grows_patch_by_patch(rt):
    h = rt.submit(class_label=207, guidance_scale=3.0, seed=5, num_sampling_steps=1, output_type="np")
    blank = h.preview("np")
    zeros = torch.zeros(1, 256, 32, dtype=torch.int8)
    assert np.array_equal(blank, rt.decode_tokens(zeros, 256, 256, seed=5, output_type="np"))
    steps(rt, 3)  # join (AR steps 0 and 1), then steps 2 and 3
    assert h.progress[0] == 4
    made = h.tokens.clone()
    assert (made[:, :4 * P] != 0).float().mean() > 0.99 and (made[:, 4 * P:] == 0).all()
    early = h.preview("np")
    assert np.array_equal(early, rt.decode_tokens(made, 256, 256, seed=5, output_type="np"))
    assert not np.array_equal(early, blank)
    pil = h.preview()
    assert len(pil) == 1 and pil[0].size == (256, 256)
    assert isinstance(h.preview("pt"), torch.Tensor)
    run_until_done(rt, h)
    final = h.preview("np")
    assert np.array_equal(final, h.result().images) and not np.array_equal(final, early)


def test_preview_types_are_checked(rt):
    h = rt.submit(class_label=1, guidance_scale=3.0, seed=1, num_sampling_steps=1, output_type="tokens")
    with pytest.raises(InvalidRequestError, match="a preview is 'pil', 'np' or 'pt'"):
        h.preview("tokens")
    h.cancel()
