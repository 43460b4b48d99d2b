"""The text-to-image family (BitDance-14B: a Qwen3 backbone, a prompt per request): its sizes and defaults, prompt
checks, cache rows and buckets, the reference loop and its engine."""

from __future__ import annotations

import torch

from ..errors import InvalidRequestError
from ..prompt_tokenizer import chat_prompt
from ..sizes import T2I_SIZES, token_grid
from ..reference.rope import rotate_half_tables
from ..reference.t2i_embeddings import t2i_position_table
from .backbone_layout import BackboneLayout, LayerWeights, projection
from .family import Family, Placement

T2I_DEFAULTS = {"height": 1024, "width": 1024, "num_sampling_steps": 50, "guidance_scale": 7.5}
MAX_POSITIONS = 8192      # positions of the engine's RoPE tables: prompt, image-start tokens and image tokens
PROMPT_POSITIONS = 256    # prompt positions (chat template and image-start tokens included) every group holds
CACHE_LEN_QUANTUM = 256   # cache lengths are rounded up to this, so requests of similar length share a group


def _round_up(n: int, quantum: int) -> int:
    return -(-n // quantum) * quantum


class TextToImage(Family):
    key = "t2i"
    max_positions = MAX_POSITIONS
    title = "text-to-image"
    condition_field = "prompt"

    @property
    def sizes(self) -> tuple[tuple[int, int], ...]:
        ok = []
        for h, w in T2I_SIZES:
            try:
                token_grid(h, w, self.downsample, self.parallel)
            except InvalidRequestError:
                continue
            ok.append((h, w))
        return tuple(ok)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        if (height, width) not in T2I_SIZES:
            return super().grid(height, width)  # refused, listing the sizes
        return token_grid(height, width, self.downsample, self.parallel)  # says why P does not tile it

    @property
    def default_size(self) -> tuple[int, int]:
        size = (T2I_DEFAULTS["height"], T2I_DEFAULTS["width"])
        sizes = self.sizes
        return size if size in sizes or not sizes else sizes[0]

    @property
    def default_steps(self) -> int:
        return T2I_DEFAULTS["num_sampling_steps"]

    @property
    def default_guidance(self) -> float:
        return T2I_DEFAULTS["guidance_scale"]

    # ------------------------------------------------------------------ requests
    def check_condition(self, prompt, negative_prompt, class_label):
        if class_label is not None:
            raise InvalidRequestError("class_label is for class-conditional models; this text-to-image model takes "
                                      "a prompt.", param="class_label")
        if not isinstance(prompt, str):
            raise InvalidRequestError(f"this text-to-image model needs a prompt (one string per request), got "
                                      f"{prompt!r}.", param="prompt")
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise InvalidRequestError(f"negative_prompt must be a string, got {type(negative_prompt).__name__}.",
                                      param="negative_prompt")
        return prompt, negative_prompt, None

    def guidance_at(self, guidance: float, ar_step: int, num_ar: int) -> float:
        return guidance  # constant over the AR steps

    def cache_rows(self, spec) -> list[list[int]]:
        """Token ids of a request's cache rows, in slot order: per image its prompt row, then (guided) its
        negative-prompt row (the unconditional prompt when ``None``); each ends with the image-start tokens."""
        tok, p = self.model.tokenizer, self.parallel
        start = tok.image_start_ids(spec.grid[0], spec.grid[1], p)
        cond = tok.encode(chat_prompt(spec.prompt)) + start
        uncond = tok.encode(chat_prompt(spec.negative_prompt)) + start
        return [row for _ in range(spec.num_images) for row in ((cond, uncond) if spec.guided else (cond,))]

    def placement(self, spec) -> Placement:
        """Group key ``(grid, P, sampling steps, guided, cache length)``; the cache length is ``max(prompt,
        PROMPT_POSITIONS) + (AR steps − 1)·P`` rounded up to ``CACHE_LEN_QUANTUM``, so prompts up to
        ``PROMPT_POSITIONS`` tokens share one group and longer ones get a group of their own length bucket."""
        rows = self.cache_rows(spec)
        longest = max(map(len, rows))
        needed = longest + (spec.num_ar - 1) * spec.parallel
        if needed > MAX_POSITIONS:
            raise InvalidRequestError(
                f"the prompt is {longest - spec.parallel} tokens; with the {spec.num_ar * spec.parallel} image "
                f"tokens of {spec.height}x{spec.width} that is {needed} positions, more than the engine's "
                f"{MAX_POSITIONS}; shorten the prompt.", param="prompt")
        max_len = _round_up(max(longest, PROMPT_POSITIONS) + (spec.num_ar - 1) * spec.parallel, CACHE_LEN_QUANTUM)
        key = (self.key, spec.grid, spec.parallel, spec.num_steps, spec.guided, max_len)
        return Placement(rows, key, max_len)

    # ------------------------------------------------------------------ running
    def reference_tokens(self, specs, generator, progress):
        from ..reference.sampler import generator_noise
        from .t2i_reference_loop import generate_t2i_tokens

        s = specs[0]
        noise = generator_noise(generator, self.model.backbone.embed_tokens.weight.device)
        return generate_t2i_tokens(self.model, [r.prompt for r in specs], [r.negative_prompt for r in specs],
                                   s.num_images, s.grid, s.num_steps, s.guidance, noise, progress)

    # ------------------------------------------------------------------ the engine's questions
    def _build_layout(self) -> BackboneLayout:
        bb, cfg = self.model.backbone, self.model.backbone_config
        layers = tuple(LayerWeights(attn_norm=l.input_layernorm.weight, qkv=l.self_attn.qkv_weight,
                                    qkv_bias=l.self_attn.qkv_bias, q_norm=l.self_attn.q_norm.weight,
                                    k_norm=l.self_attn.k_norm.weight, out=projection(l.self_attn.o_proj),
                                    out_bias=l.self_attn.o_proj.bias, ffn_norm=l.post_attention_layernorm.weight,
                                    gate_up=l.mlp.gate_up_weight, down=projection(l.mlp.down_proj)) for l in bb.layers)
        device = bb.embed_tokens.weight.device
        cos, sin = rotate_half_tables(torch.arange(MAX_POSITIONS, device=device), cfg.head_dim, cfg.rope_theta)
        return BackboneLayout(width=cfg.hidden_size, heads=cfg.num_attention_heads, kv_heads=cfg.num_key_value_heads,
                              head_dim=cfg.head_dim, ffn_width=cfg.intermediate_size, eps=cfg.rms_norm_eps,
                              norm_style="hf", input_norm=None, final_norm=bb.norm.weight, layers=layers,
                              cos=cos.contiguous(), sin=sin.contiguous())

    def prefill_inputs(self, rows, device, pad_rows=None, pad_len=None):
        """Prompt rows padded with id 0 (never attended: each row's length bounds its keys); the causal part is
        the prompt, ``<|vision_start|>`` and ``<|res_H|>``, the first block ``<|res_W|>`` and the query tokens.
        Filler rows (``pad_rows``) are one block of id 0."""
        p = self.parallel
        longest = max(map(len, rows)) if pad_len is None else pad_len
        total = len(rows) if pad_rows is None else pad_rows
        if longest < max(map(len, rows)) or total < len(rows):
            raise ValueError(f"prefill_inputs: {len(rows)} rows up to {max(map(len, rows))} long do not fit "
                             f"{total} rows of {longest}")
        ids = [seq + [0] * (longest - len(seq)) for seq in rows] + [[0] * longest] * (total - len(rows))
        lengths = [len(seq) for seq in rows] + [p] * (total - len(rows))
        host = torch.tensor(ids, dtype=torch.long)
        lengths = torch.tensor(lengths, dtype=torch.int32).to(device)
        return self.model.backbone.embed(host.to(device)), lengths, lengths - p

    def _position_table(self, grid):
        p = self.parallel
        hidden = self.model.backbone_config.hidden_size
        return t2i_position_table(grid[0], grid[1], hidden, int(round(p ** 0.5))).view(-1, p, hidden)

    def embed_feedback(self, tokens, pos):
        """Projected tokens plus each row's position term, in the backbone's dtype."""
        return (self.model.projector(tokens) + pos).to(self.model.backbone.embed_tokens.weight.dtype)

    @property
    def token_embedder(self) -> torch.nn.Module:
        return self.model.projector

    def prefix_lengths(self, spec) -> list[int]:
        return [len(row) for row in self.cache_rows(spec)]

    def modules(self) -> dict[str, torch.nn.Module]:
        m = self.model
        return {"backbone": m.backbone, "head": m.head, "decoder": m.decoder, "projector": m.projector}

    def describe(self):
        info = super().describe()
        c = self.model.backbone_config
        info["backbone"] = {"hidden": c.hidden_size, "layers": c.num_hidden_layers, "heads": c.num_attention_heads,
                            "kv_heads": c.num_key_value_heads}
        return info
