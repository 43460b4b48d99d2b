"""The class-conditional family (the ImageNet models B/L/H, 1x/4x/16x: a class label per request): its size (the
checkpoint's token grid times the decoder's downsampling), class ids (read from the checkpoint), the release's
guidance schedule and unguided step 0, cache rows, the reference loop and its engine."""

from __future__ import annotations

import numbers

import torch

from ..errors import InvalidRequestError
from ..reference.sampler import linear_guidance
from ..reference.c2i_backbone import NORM_EPS
from .backbone_layout import BackboneLayout, LayerWeights, projection
from .family import Family, Placement

C2I_STEPS = 100
# the release's sampling flags, by (width, layers, P); other shapes fall back to C2I_GUIDANCE_FALLBACK
C2I_GUIDANCE = {(768, 24, 1): 3.2, (768, 24, 4): 3.9, (768, 24, 16): 6.1, (1024, 32, 1): 4.0, (1280, 40, 1): 4.55}
C2I_GUIDANCE_FALLBACK = 4.0


class ClassConditional(Family):
    key = "c2i"
    title = "class-conditional"
    condition_field = "class_label"

    @property
    def config(self):
        return self.model.config

    @property
    def num_classes(self) -> int:
        """Real classes: ids ``0 .. num_classes − 1`` (id ``num_classes`` is the null class of guidance)."""
        return self.config.num_classes

    @property
    def sizes(self) -> tuple[tuple[int, int], ...]:
        side = self.config.grid * self.downsample
        return ((side, side),)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        if (height, width) not in self.sizes:
            h, w = self.sizes[0]
            raise InvalidRequestError(f"this class-conditional model makes {h}x{w} images only, got "
                                      f"{height}x{width}.", param="size")
        return self.config.grid, self.config.grid

    @property
    def default_size(self) -> tuple[int, int]:
        return self.sizes[0]

    @property
    def default_steps(self) -> int:
        return C2I_STEPS

    @property
    def default_guidance(self) -> float:
        c = self.config
        return C2I_GUIDANCE.get((c.dim, c.num_layers, c.parallel), C2I_GUIDANCE_FALLBACK)

    # ------------------------------------------------------------------ requests
    def check_label(self, label, name: str = "class_label") -> int:
        if isinstance(label, bool) or not isinstance(label, numbers.Integral) or not 0 <= label < self.num_classes:
            raise InvalidRequestError(f"{name} = {label!r} is not a class of this model: it takes a class id in "
                                      f"0..{self.num_classes - 1}.", param=name)
        return int(label)

    def check_condition(self, prompt, negative_prompt, class_label):
        for name, value in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if value is not None:
                raise InvalidRequestError(f"this class-conditional model takes a class_label, not a {name}.",
                                          param=name)
        if class_label is None:
            raise InvalidRequestError(f"this class-conditional model needs class_label, a class id in "
                                      f"0..{self.num_classes - 1}.", param="class_label")
        return None, None, self.check_label(class_label)

    def guidance_at(self, guidance: float, ar_step: int, num_ar: int) -> float:
        """The release's linear schedule ``1 + (g − 1)·k / S`` (1.0 when unguided)."""
        return linear_guidance(guidance, ar_step, num_ar) if guidance > 1.0 else 1.0

    def leading_unguided_steps(self, guidance: float, num_ar: int) -> int:
        k = 0
        while guidance > 1.0 and k < num_ar and self.guidance_at(guidance, k, num_ar) <= 1.0:
            k += 1
        return k

    def cache_rows(self, spec) -> list[int]:
        """Class ids of a request's cache rows, in slot order: per image its label, then (guided) the null class."""
        null = self.config.null_class
        return [row for _ in range(spec.num_images) for row in ((spec.class_label, null) if spec.guided
                                                                 else (spec.class_label,))]

    def placement(self, spec) -> Placement:
        """Group key ``(grid, P, sampling steps, guided, cache length)``; the cache holds the prefix and every
        image token."""
        cfg = self.config
        max_len = cfg.num_prefix + cfg.num_tokens
        key = (self.key, spec.grid, spec.parallel, spec.num_steps, spec.guided, max_len)
        return Placement(self.cache_rows(spec), key, max_len)

    # ------------------------------------------------------------------ running
    def reference_tokens(self, specs, generator, progress):
        from ..reference.sampler import generator_noise
        from .c2i_reference_loop import generate_c2i_tokens

        s = specs[0]
        noise = generator_noise(generator, self.model.backbone.norm.weight.device)
        rows = [r.class_label for r in specs for _ in range(r.num_images)]
        return generate_c2i_tokens(self.model, rows, s.num_steps, s.guidance, noise, progress)

    # ------------------------------------------------------------------ the engine's questions
    def _build_layout(self) -> BackboneLayout:
        bb, cfg = self.model.backbone, self.config
        layers = tuple(LayerWeights(attn_norm=l.attention_norm.weight, qkv=projection(l.attention.wqkv), qkv_bias=None,
                                    q_norm=None, k_norm=None, out=projection(l.attention.wo), out_bias=None,
                                    ffn_norm=l.ffn_norm.weight, gate_up=projection(l.feed_forward.w1),
                                    down=projection(l.feed_forward.w2)) for l in bb.layers)
        cos, sin = bb.rope_tables()
        return BackboneLayout(width=cfg.dim, heads=cfg.num_heads, kv_heads=cfg.num_heads, head_dim=cfg.head_dim,
                              ffn_width=layers[0].down.shape[1], eps=NORM_EPS, norm_style="torch",
                              input_norm=bb.emb_norm.weight, final_norm=bb.norm.weight, layers=layers,
                              cos=cos.contiguous(), sin=sin.contiguous())

    def prefill_inputs(self, rows, device, pad_rows=None, pad_len=None):
        """Class tokens and the P−1 query tokens of every row; the causal part is every class token but the last.
        Every row has the same length (``num_prefix``); filler rows (``pad_rows``) take the null class."""
        total = len(rows) if pad_rows is None else pad_rows
        if total < len(rows) or (pad_len is not None and pad_len != self.config.num_prefix):
            raise ValueError(f"prefill_inputs: {len(rows)} rows of {self.config.num_prefix} do not fit {total} "
                             f"rows of {pad_len}")
        labels = torch.tensor(list(rows) + [self.config.null_class] * (total - len(rows))).to(device)
        lengths = torch.full((total,), self.config.num_prefix, dtype=torch.int32, device=device)
        return self.model.backbone.class_tokens(labels), lengths, torch.full_like(lengths, self.config.causal_len)

    def prefill_length(self, max_len: int, num_ar: int) -> int:
        return self.config.num_prefix

    def _position_table(self, grid):
        return self.model.backbone.pos_for_diff.weight.float().view(-1, self.parallel, self.config.dim)

    def embed_feedback(self, tokens, pos):
        """Tokens through ``proj_in`` (the position term enters the head's condition only)."""
        return self.model.backbone.embed_tokens(tokens)

    @property
    def token_embedder(self) -> torch.nn.Module:
        return self.model.backbone.proj_in

    def prefix_lengths(self, spec) -> list[int]:
        return [self.config.num_prefix] * spec.rows

    def modules(self) -> dict[str, torch.nn.Module]:
        m = self.model
        return {"backbone": m.backbone, "head": m.head, "decoder": m.decoder}

    def describe(self):
        info = super().describe()
        c = self.config
        info["backbone"] = {"hidden": c.dim, "layers": c.num_layers, "heads": c.num_heads}
        info["classes"] = self.num_classes
        return info
