"""Text-to-image generation loop on the reference modules, in the release's call structure.

Each prompt (and its unconditional counterpart) runs as its own group of ``num_images`` rows with its own cache,
as the release runs the conditional and unconditional sequences: a causal prefill of the prompt,
``<|vision_start|>`` and ``<|res_H|>``, then the first block (``<|res_W|>`` and the query tokens), then one block of
P projected tokens per AR step. The head sees all rows at once: conditional rows (prompt-major), then
unconditional rows. Returns the binary tokens ``[prompts·num_images, h·w, C]`` in generation order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..loading.t2i_checkpoint import T2IModel
from ..prompt_tokenizer import chat_prompt
from ..reference.masks import block_causal_mask
from ..reference.sampler import NoiseFn, sample_patch
from ..reference.t2i_embeddings import t2i_position_table

ProgressFn = Callable[[int, int], None]


@dataclass
class RowGroup:
    """Rows sharing one token sequence (one prompt's images, conditional or not) and their cache."""
    ids: list[int]
    rows: int

    def prefill(self, model: T2IModel, max_len: int) -> torch.Tensor:
        bb = model.backbone
        self.cache = bb.new_cache(self.rows, max_len)
        device = bb.embed_tokens.weight.device
        embeds = bb.embed(torch.tensor(self.ids, device=device)).unsqueeze(0).expand(self.rows, -1, -1)
        total, p = len(self.ids), model.parallel
        mask = block_causal_mask(total, total - p, p, device)
        causal = total - p
        bb(embeds[:, :causal], torch.arange(causal, device=device), None, self.cache)  # causal
        return bb(embeds[:, causal:], torch.arange(causal, total, device=device), mask[None, None, causal:],
                  self.cache)

    def step(self, model: T2IModel, embeds: torch.Tensor) -> torch.Tensor:
        """One block of P new embeddings, attending to the whole cache and bidirectionally within the block."""
        start, p = self.cache.length, embeds.shape[1]
        mask = torch.ones(1, 1, p, start + p, dtype=torch.bool, device=embeds.device)
        return model.backbone(embeds, torch.arange(start, start + p, device=embeds.device), mask, self.cache)


def generate_t2i_tokens(model: T2IModel, prompts: list[str], negative_prompts: list[str | None], num_images: int,
                        grid: tuple[int, int], num_steps: int, guidance: float, noise: NoiseFn,
                        progress: ProgressFn | None = None) -> torch.Tensor:
    tok, p, c = model.tokenizer, model.parallel, model.token_channels
    h, w = grid
    num_ar = h * w // p
    start_ids = tok.image_start_ids(h, w, p)
    groups = [RowGroup(tok.encode(chat_prompt(pr)) + start_ids, num_images) for pr in prompts]
    if guidance > 1.0:  # a negative prompt replaces the unconditional one
        groups += [RowGroup(tok.encode(chat_prompt(neg)) + start_ids, num_images) for neg in negative_prompts]
    dtype = model.backbone.embed_tokens.weight.dtype
    device = model.backbone.embed_tokens.weight.device
    pos = t2i_position_table(h, w, model.backbone_config.hidden_size, int(round(p ** 0.5))).to(device)
    hidden = [g.prefill(model, len(g.ids) + (num_ar - 1) * p) for g in groups]
    head_dtype = model.head.input_proj.weight.dtype

    def head(x, t, cond):
        return model.head(x.to(head_dtype), t, cond.to(head_dtype))

    cond_rows = len(prompts) * num_images
    out = []
    for k in range(num_ar):
        block_pos = pos[k * p:(k + 1) * p]
        cond = torch.cat(hidden, dim=0) + block_pos
        tokens = torch.sign(sample_patch(head, cond, c, guidance, num_steps, noise, model.head_config.time_shift))
        out.append(tokens[:cond_rows])
        if k + 1 < num_ar:
            embeds = (model.projector(tokens) + block_pos).to(dtype)
            hidden = [g.step(model, embeds[i * num_images:(i + 1) * num_images]) for i, g in enumerate(groups)]
        if progress is not None:
            progress(k + 1, num_ar)
    return torch.cat(out, dim=1)

