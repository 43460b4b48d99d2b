"""Class-conditional generation loop on the reference modules, in the release's order.

Rows: the B labels, then (with guidance) B copies of the null class 1000. Step 0 runs the 64 class tokens and
P−1 query tokens (causal over the first 63, the last class token and the queries as one block); each later step feeds
the P binary tokens of the previous patch through ``proj_in``. Guidance grows linearly from 1.0 at step 0, where
the sampler runs unguided over all 2B rows and every row keeps its own first patch (the release's behaviour).
Returns the conditional rows' tokens ``[B, h·w, C]`` in generation order.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..loading.c2i_checkpoint import C2IModel
from ..reference.masks import block_causal_mask
from ..reference.sampler import NoiseFn, linear_guidance, sample_patch


def generate_c2i_tokens(model: C2IModel, labels: list[int], num_steps: int, guidance: float, noise: NoiseFn,
                        progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    bb, cfg = model.backbone, model.config
    device = bb.norm.weight.device
    p, num_ar = cfg.parallel, cfg.num_tokens // cfg.parallel
    batch = len(labels)
    rows = labels + ([cfg.null_class] * batch if guidance > 1.0 else [])
    cache = bb.new_cache(len(rows))
    prefix = bb.class_tokens(torch.tensor(rows, device=device))
    hidden = bb(prefix, block_causal_mask(cfg.num_prefix, cfg.causal_len, p, device), cache)
    head_dtype = model.head.input_proj.weight.dtype

    def head(x, t, cond):
        return model.head(x.to(head_dtype), t, cond.to(head_dtype))

    out = []
    for i in range(num_ar):
        cond = bb.head_condition(hidden, i)
        scale = linear_guidance(guidance, i, num_ar)
        tokens = torch.sign(sample_patch(head, cond, cfg.token_channels, scale, num_steps, noise,
                                         model.head_config.time_shift))
        out.append(tokens)
        if i + 1 < num_ar:
            mask = torch.ones(p, cache.length + p, dtype=torch.bool, device=device)
            hidden = bb(bb.embed_tokens(tokens), mask, cache)
        if progress is not None:
            progress(i + 1, num_ar)
    return torch.cat(out, dim=1)[:batch]
