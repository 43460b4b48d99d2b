"""The released models' shapes as config objects, their parameters by role, and random-weight models of them.

Shapes (spec §2, §3; the token decoders from the release's ``train/configs/bitdance_14b_64x.yaml`` and
``imagenet_gen/src/model.py``: ch 256, ch_mult [1, 1, 2, 2, 4], 4 residual blocks, 32 token channels):
- ``14B-64x``, ``14B-16x``: Qwen3-14B (hidden 5120, 40 layers, 40 query / 8 KV heads of 128, SwiGLU 17408) with
  the vocabulary the release resizes to (Qwen3's 151,669 tokens + 256 resolution tokens + P − 1 query tokens);
  head 5120 wide, 6 TransBlocks, 2 adaLN linears, SwiGLU, sigmoid output.
- ``B-1x`` … ``H-16x``: the class-conditional B/L/H backbones and heads at P = 1, 4, 16.

``build_model(shape, device, dtype, seed)`` makes a ``T2IModel`` / ``C2IModel`` of a shape with random weights drawn
straight on ``device`` one tensor at a time (modules built on ``meta``, then assigned), so no host memory of the
model's size is needed. Draws, from one ``torch.Generator`` on the device: matrices ~ N(0, 1/fan_in), embeddings
~ N(0, 1), norm weights 1, biases ~ N(0, 0.02²). The prompt tokenizer is the tiny models' byte-level BPE with the
BitDance special tokens (prompts tokenize to more ids than with Qwen's 151k merges; the prefill is a small share).

``parameter_roles(parts)`` splits parameters by how generation reads them (what the speed floors count).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from shapes import C2I_SIZES, T2I_14B
from torch import nn

from bitdance_rt.loading.c2i_checkpoint import C2I_ATTN_HEAD_DIM, C2IModel
from bitdance_rt.loading.fused_weights import fuse_for_engine
from bitdance_rt.loading.t2i_checkpoint import T2IModel
from bitdance_rt.loading.tensor_files import TensorTable, load_into
from bitdance_rt.prompt_tokenizer import PromptTokenizer
from bitdance_rt.reference.c2i_backbone import C2IBackbone, C2IConfig
from bitdance_rt.reference.diffusion_head import DiffusionHead, DiffusionHeadConfig
from bitdance_rt.reference.qwen3 import Qwen3Backbone, Qwen3Config
from bitdance_rt.reference.t2i_embeddings import TokenProjector
from bitdance_rt.reference.token_decoder import DecoderLayout, TokenDecoder, expected_shapes as decoder_shapes, \
    layout_from_ddconfig
from bitdance_rt.sizes import T2I_SIZES
from bitdance_rt.tiny_models import _build_tokenizer

Shapes = dict[str, tuple[int, ...]]

RELEASE_DDCONFIG = {"double_z": False, "z_channels": 32, "in_channels": 3, "out_ch": 3, "ch": 256,
                    "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 4}
QWEN3_TOKENIZER_LEN = 151_669  # Qwen3's 151,643 BPE tokens + 26 added special tokens
RESOLUTION_TOKENS = 256  # <|res_1|> .. <|res_256|>
QWEN3_14B = {"intermediate": 17408, "layers": 40, "rms_norm_eps": 1e-6, "rope_theta": 1e6,
             "max_positions": 40960}
T2I_HEAD_BLOCKS, T2I_HEAD_ADALN = 6, 2
C2I_DEPTHS = {"B": (24, 6, 2), "L": (32, 8, 2), "H": (40, 12, 3)}  # backbone layers, head blocks, adaLN linears
EMBEDDING_KEYS = ("embed_tokens.weight", "cls_embedding.weight", "pos_for_diff.weight", "query_token")
BIAS_STD = 0.02


@dataclass(frozen=True)
class T2IShape:
    name: str
    backbone: Qwen3Config
    head: DiffusionHeadConfig
    decoder: DecoderLayout
    parallel: int

    family = "t2i"

    def part_shapes(self) -> dict[str, Shapes]:
        hidden, c = self.backbone.hidden_size, self.head.token_channels
        return {"backbone": self.backbone.expected_shapes(), "head": self.head.expected_shapes(),
                "projector": {"fc1.weight": (hidden, c), "fc1.bias": (hidden,),
                              "fc2.weight": (hidden, hidden), "fc2.bias": (hidden,)},
                "decoder": decoder_shapes(self.decoder)}


@dataclass(frozen=True)
class C2IShape:
    name: str
    config: C2IConfig
    head: DiffusionHeadConfig
    decoder: DecoderLayout

    family = "c2i"

    @property
    def parallel(self) -> int:
        return self.config.parallel

    def part_shapes(self) -> dict[str, Shapes]:
        return {"backbone": self.config.expected_shapes(), "head": self.head.expected_shapes(),
                "decoder": decoder_shapes(self.decoder)}


def release_decoder() -> DecoderLayout:
    return layout_from_ddconfig(RELEASE_DDCONFIG, False, "bench/model_shapes.py RELEASE_DDCONFIG")


def t2i_14b(parallel: int) -> T2IShape:
    hidden, channels = T2I_14B["hidden"], T2I_14B["token_channels"]
    backbone = Qwen3Config(
        vocab_size=QWEN3_TOKENIZER_LEN + RESOLUTION_TOKENS + parallel - 1, hidden_size=hidden,
        intermediate_size=QWEN3_14B["intermediate"], num_hidden_layers=QWEN3_14B["layers"],
        num_attention_heads=T2I_14B["q_heads"], num_key_value_heads=T2I_14B["kv_heads"],
        head_dim=T2I_14B["head_dim"], rms_norm_eps=QWEN3_14B["rms_norm_eps"], rope_theta=QWEN3_14B["rope_theta"],
        max_position_embeddings=QWEN3_14B["max_positions"])
    head = DiffusionHeadConfig(
        token_channels=channels, cond_channels=hidden, width=T2I_14B["head_width"], depth=T2I_HEAD_BLOCKS,
        num_adaln=T2I_HEAD_ADALN, block_kind="trans", attn_head_dim=T2I_14B["head_attn_dim"], use_swiglu=True,
        sigmoid_output=True, time_shift=1.0)
    return T2IShape(f"14B-{parallel}x", backbone, head, release_decoder(), parallel)


def c2i(size: str, parallel: int) -> C2IShape:
    dim, heads, width = C2I_SIZES[size]
    layers, blocks, adaln = C2I_DEPTHS[size]
    config = C2IConfig(dim=dim, num_layers=layers, num_heads=heads, token_channels=32, parallel=parallel)
    head = DiffusionHeadConfig(
        token_channels=32, cond_channels=dim, width=width, depth=blocks, num_adaln=adaln,
        block_kind="res" if parallel == 1 else "trans", attn_head_dim=C2I_ATTN_HEAD_DIM, use_swiglu=True,
        sigmoid_output=False, time_shift=1.0)
    return C2IShape(f"{size}-{parallel}x", config, head, release_decoder())


RELEASED: dict[str, T2IShape | C2IShape] = {
    **{s.name: s for s in (t2i_14b(64), t2i_14b(16))},
    **{s.name: s for s in (c2i(size, p) for size in C2I_DEPTHS for p in (1, 4, 16))},
}


# ----------------------------------------------------------------------------------------------------------------
# Parameters by role
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ParameterRoles:
    """Parameter counts by how generation reads them.

    ``backbone``: the layers and norms, read by every backbone pass (prefill and each AR step);
    ``feed``: the token embedder (T2I projector, class-conditional ``proj_in``), read per AR step for the P tokens
    fed back; ``gathered``: embedding tables of which a pass reads only a few rows (token, class, query and
    head-position tables); ``head_pass``: what one head evaluation reads (blocks, adaLN linears, input projection,
    final layer); ``head_cond``: ``cond_embed``, once per AR step; ``head_time``: the time-embedding MLP (depends
    only on the step count); ``decoder``: the token decoder, once per image."""
    backbone: int
    feed: int
    gathered: int
    head_pass: int
    head_cond: int
    head_time: int
    decoder: int

    @property
    def total(self) -> int:
        return (self.backbone + self.feed + self.gathered + self.head_pass + self.head_cond + self.head_time
                + self.decoder)


def parameter_roles(parts: dict[str, Shapes]) -> ParameterRoles:
    """``parts``: part name (backbone, head, decoder, and projector for T2I) -> key -> shape, keys without the
    part's prefix."""
    def count(shapes: Shapes, keep=lambda key: True) -> int:
        return sum(math.prod(s) for k, s in shapes.items() if keep(k))

    backbone, head = parts["backbone"], parts["head"]
    gathered = lambda k: k in EMBEDDING_KEYS  # noqa: E731
    feed = lambda k: k.startswith("proj_in.")  # noqa: E731
    return ParameterRoles(
        backbone=count(backbone, lambda k: not gathered(k) and not feed(k)),
        feed=count(backbone, feed) + count(parts.get("projector", {})),
        gathered=count(backbone, gathered),
        head_pass=count(head, lambda k: not k.startswith(("time_embed.", "cond_embed."))),
        head_cond=count(head, lambda k: k.startswith("cond_embed.")),
        head_time=count(head, lambda k: k.startswith("time_embed.")),
        decoder=count(parts["decoder"]))


def model_parts(model) -> dict[str, Shapes]:
    """The part shapes of a built or loaded model (or its family object), read off its modules."""
    from bitdance_rt.families import family_of

    modules = family_of(model).modules()
    return {name: {k: tuple(p.shape) for k, p in m.named_parameters()} for name, m in modules.items()}


# ----------------------------------------------------------------------------------------------------------------
# Random-weight models on the device
# ----------------------------------------------------------------------------------------------------------------

def _random_table(shapes: Shapes, device: torch.device, dtype: torch.dtype, gen: torch.Generator) -> TensorTable:
    def fetch(key: str) -> torch.Tensor:
        shape = shapes[key]
        t = torch.empty(shape, device=device, dtype=dtype)
        if key.endswith(EMBEDDING_KEYS):
            return t.normal_(0.0, 1.0, generator=gen)
        if key.endswith(".bias"):
            return t.normal_(0.0, BIAS_STD, generator=gen)
        if len(shape) == 1:  # norm weights
            return t.fill_(1.0)
        return t.normal_(0.0, 1.0 / math.sqrt(math.prod(shape[1:])), generator=gen)
    return TensorTable(dict(shapes), fetch, dict.fromkeys(shapes, "random"))


def _random_module(factory, shapes: Shapes, part: str, device: torch.device, dtype: torch.dtype,
                   gen: torch.Generator) -> nn.Module:
    return load_into(factory, _random_table(shapes, device, dtype, gen), shapes, part)


def tiny_prompt_tokenizer() -> PromptTokenizer:
    """The tiny models' tokenizer (byte-level BPE with every BitDance special token), read back from a temporary
    ``tokenizer.json``."""
    with tempfile.TemporaryDirectory() as tmp:
        _build_tokenizer().save(str(Path(tmp) / "tokenizer.json"))
        return PromptTokenizer(Path(tmp))


def build_model(shape: T2IShape | C2IShape, device: torch.device, dtype: torch.dtype,
                seed: int = 0) -> T2IModel | C2IModel:
    gen = torch.Generator(device=device).manual_seed(seed)
    parts = shape.part_shapes()
    with torch.no_grad():
        head = _random_module(lambda: DiffusionHead(shape.head), parts["head"], "head", device, dtype, gen)
        decoder = _random_module(lambda: TokenDecoder(shape.decoder), parts["decoder"], "decoder", device, dtype,
                                 gen)
        source = Path(f"<random {shape.name}>")
        if isinstance(shape, T2IShape):
            cfg = shape.backbone
            backbone = _random_module(lambda: Qwen3Backbone(cfg), parts["backbone"], "backbone", device, dtype, gen)
            projector = _random_module(lambda: TokenProjector(shape.head.token_channels, cfg.hidden_size),
                                       parts["projector"], "projector", device, dtype, gen)
            tokenizer = tiny_prompt_tokenizer()
            tokenizer.check_special_tokens(shape.parallel, {s // shape.decoder.downsample for hw in T2I_SIZES
                                                            for s in hw})
            fuse_for_engine(backbone, head)  # as the loader does
            return T2IModel(path=source, backbone_config=cfg, head_config=shape.head, decoder_layout=shape.decoder,
                            parallel=shape.parallel, tokenizer=tokenizer, backbone=backbone, head=head,
                            projector=projector, decoder=decoder)
        backbone = _random_module(lambda: C2IBackbone(shape.config), parts["backbone"], "backbone", device, dtype,
                                  gen)
        fuse_for_engine(None, head)
        return C2IModel(path=source, tokenizer_path=None, config=shape.config, head_config=shape.head,
                        decoder_layout=shape.decoder, backbone=backbone, head=head, decoder=decoder)
