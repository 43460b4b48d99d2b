"""Tiny random-weight BitDance checkpoints, written in exactly the released files' layouts.

``write_tiny_t2i(path)`` writes a text-to-image model directory like ``BitDance-14B-64x``: a Hugging Face
Qwen3ForCausalLM (``config.json``, sharded bfloat16 ``model-0000k-of-0000n.safetensors`` + index, byte-level BPE
tokenizer files with the BitDance special tokens), ``ae_config.json`` + ``ae.safetensors`` (binary-token
autoencoder, float32), ``vision_head_config.json`` + ``vision_head.safetensors`` (``net.*``) and
``projector.safetensors`` (``fc1``/``fc2``).

``write_tiny_c2i(path)`` writes the class-conditional pair: ``BitDance_tiny_<P>x.pt`` (``torch.save`` of
``{"ema"|"model": state_dict}`` with the BitDance module's keys, its ``vae.*`` submodule included) and
``ae_tiny_d16c32.pt`` (``{"state_dict": ...}`` with ``encoder.*``, ``decoder.*`` and ``quantize.*`` keys).

Sizes: backbones of width 64 with 2 layers, binary tokens of C = 32 channels, a decoder that upsamples 16x; heads
of 2 blocks (T2I: width 256, 2 adaLN linears; class-conditional: width 128, 2 adaLN linears for P > 1, 1 for P = 1).
Weights are normal draws from one ``torch.Generator`` seeded with ``seed`` (no global RNG), scaled so that
activations stay O(1): matrices ~ N(0, 1/fan_in), norm weights ~ 1 + N(0, 0.1^2), biases ~ N(0, 0.05^2). Unlike the
release's training init, no adaLN or output layer is zero, so heads give tokens of both signs and decoders give
images that vary.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from bitdance_rt.errors import InvalidRequestError

Shapes = dict[str, tuple[int, ...]]

TOKEN_CHANNELS = 32
MAX_QUERY_TOKENS = 63
MAX_RES_TOKEN = 256
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    *(f"<|res_{i}|>" for i in range(1, MAX_RES_TOKEN + 1)),
    *(f"<|query_{i}|>" for i in range(1, MAX_QUERY_TOKENS + 1)),
)
TINY_DDCONFIG: dict = {
    "double_z": False,
    "z_channels": TOKEN_CHANNELS,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 32,
    "ch_mult": [1, 1, 1, 1, 1],
    "num_res_blocks": 1,
    "resolution": 256,
}
TINY_QWEN3: dict = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 96,
}
T2I_HEAD_WIDTH = 256
T2I_HEAD_BLOCKS = 2
T2I_HEAD_ADALN = 2
C2I_DIM = 64
C2I_LAYERS = 2
C2I_HEADS = 4
C2I_FFN_HIDDEN = -(-int(8 * C2I_DIM / 3) // 256) * 256  # int(8·dim/3) rounded up to a multiple of 256
C2I_HEAD_WIDTH = 128
C2I_HEAD_BLOCKS = 2
C2I_CLASS_TOKENS = 64
C2I_NUM_CLASSES = 1000
C2I_GRID = 16
C2I_QUANTIZER_CODEBOOKS = 4

_SAFETENSORS_METADATA = {"format": "pt"}
_PRETOKENIZE_REGEX = (  # Qwen2/Qwen3's split pattern
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
_BPE_MERGES: tuple[tuple[str, str], ...] = (
    ("Ġ", "t"), ("h", "e"), ("i", "n"), ("Ġ", "a"), ("r", "e"), ("o", "n"), ("Ġt", "he"), ("e", "r"),
    ("a", "t"), ("u", "s"), ("us", "er"), ("a", "s"), ("as", "s"), ("ass", "i"), ("Ġ", "c"), ("o", "r"),
)
_EMBEDDING_STD = {"embed_tokens": 1.0, "cls_embedding": 1.0, "query_token": 1.0, "pos_for_diff": 0.5}


# ----------------------------------------------------------------------------------------------------------------
# Key tables: state-dict name -> shape, as the release's modules name and size them.
# ----------------------------------------------------------------------------------------------------------------

def _linear(prefix: str, fan_in: int, fan_out: int, bias: bool = True) -> Shapes:
    shapes = {f"{prefix}.weight": (fan_out, fan_in)}
    if bias:
        shapes[f"{prefix}.bias"] = (fan_out,)
    return shapes


def _conv(prefix: str, c_in: int, c_out: int, kernel: int, bias: bool) -> Shapes:
    shapes = {f"{prefix}.weight": (c_out, c_in, kernel, kernel)}
    if bias:
        shapes[f"{prefix}.bias"] = (c_out,)
    return shapes


def _affine_norm(prefix: str, channels: int) -> Shapes:
    return {f"{prefix}.weight": (channels,), f"{prefix}.bias": (channels,)}


def _conv_res_block(prefix: str, c_in: int, c_out: int) -> Shapes:
    shapes = {**_affine_norm(f"{prefix}.norm1", c_in), **_affine_norm(f"{prefix}.norm2", c_out)}
    shapes |= _conv(f"{prefix}.conv1", c_in, c_out, 3, bias=False)
    shapes |= _conv(f"{prefix}.conv2", c_out, c_out, 3, bias=False)
    if c_in != c_out:
        shapes |= _conv(f"{prefix}.nin_shortcut", c_in, c_out, 1, bias=False)
    return shapes


def _encoder_shapes(prefix: str, dd: dict) -> Shapes:
    ch, mult, n_res = dd["ch"], dd["ch_mult"], dd["num_res_blocks"]
    shapes = _conv(f"{prefix}.conv_in", dd["in_channels"], ch, 3, bias=False)
    in_mult = [1, *mult]
    for level, m in enumerate(mult):
        block_in, block_out = ch * in_mult[level], ch * m
        for i in range(n_res):
            shapes |= _conv_res_block(f"{prefix}.down.{level}.block.{i}", block_in, block_out)
            block_in = block_out
        if level < len(mult) - 1:
            shapes |= _conv(f"{prefix}.down.{level}.downsample", block_out, block_out, 3, bias=True)
    for i in range(n_res):
        shapes |= _conv_res_block(f"{prefix}.mid_block.{i}", block_in, block_in)
    shapes |= _affine_norm(f"{prefix}.norm_out", block_in)
    shapes |= _conv(f"{prefix}.conv_out", block_in, dd["z_channels"], 1, bias=True)
    return shapes


def _decoder_shapes(prefix: str, dd: dict, gan_decoder: bool) -> Shapes:
    ch, mult, n_res, z = dd["ch"], dd["ch_mult"], dd["num_res_blocks"], dd["z_channels"]
    block_in = ch * mult[-1]
    shapes = _conv(f"{prefix}.conv_in", 2 * z if gan_decoder else z, block_in, 3, bias=True)
    for i in range(n_res):
        shapes |= _conv_res_block(f"{prefix}.mid_block.{i}", block_in, block_in)
    levels: dict[int, Shapes] = {}
    adaptive: dict[int, Shapes] = {}
    for level in reversed(range(len(mult))):
        adaptive[level] = {**_linear(f"{prefix}.adaptive.{level}.gamma", z, block_in),
                           **_linear(f"{prefix}.adaptive.{level}.beta", z, block_in)}
        level_shapes: Shapes = {}
        block_out = ch * mult[level]
        for i in range(n_res):
            level_shapes |= _conv_res_block(f"{prefix}.up.{level}.block.{i}", block_in, block_out)
            block_in = block_out
        if level > 0:
            level_shapes |= _conv(f"{prefix}.up.{level}.upsample.conv1", block_in, 4 * block_in, 3, bias=True)
        levels[level] = level_shapes
    for level in range(len(mult)):
        shapes |= levels[level]
    for level in range(len(mult)):
        shapes |= adaptive[level]
    shapes |= _affine_norm(f"{prefix}.norm_out", block_in)
    shapes |= _conv(f"{prefix}.conv_out", block_in, dd["out_ch"], 3, bias=True)
    return shapes


def _autoencoder_shapes(prefix: str, dd: dict, gan_decoder: bool) -> Shapes:
    return {**_encoder_shapes(f"{prefix}encoder", dd), **_decoder_shapes(f"{prefix}decoder", dd, gan_decoder)}


def _swiglu(prefix: str, fan_in: int, width: int, out: int, bias: bool) -> Shapes:
    return {**_linear(f"{prefix}.w1", fan_in, 2 * width, bias), **_linear(f"{prefix}.w2", width, out, bias)}


def _diff_head_shapes(prefix: str, cond: int, width: int, blocks: int, adaln: int, block_kind: str) -> Shapes:
    """TransEncoder (block_kind "trans") or MlpEncoder ("res") keys of a DiffHead's ``net``."""
    mlp_width = int(1.5 * width)
    shapes = _linear(f"{prefix}.time_embed.mlp.0", 256, width) | _linear(f"{prefix}.time_embed.mlp.2", width, width)
    shapes |= _linear(f"{prefix}.cond_embed", cond, width)
    shapes |= _linear(f"{prefix}.input_proj", TOKEN_CHANNELS, width)
    for i in range(blocks):
        block = f"{prefix}.res_blocks.{i}"
        if block_kind == "trans":
            shapes |= _affine_norm(f"{block}.norm1", width)
            shapes |= _linear(f"{block}.attn.wqkv", width, 3 * width)
            shapes |= _linear(f"{block}.attn.wo", width, width)
            shapes |= _affine_norm(f"{block}.norm2", width)
        else:
            shapes |= _affine_norm(f"{block}.norm", width)
        shapes |= _swiglu(block, width, mlp_width, width, bias=True)
    modulation = 6 if block_kind == "trans" else 3
    for k in range(adaln):
        shapes |= _linear(f"{prefix}.ada_ln_blocks.{k}", width, modulation * width)
    shapes |= _linear(f"{prefix}.final_layer.ada_ln_modulation", width, 2 * width)
    shapes |= _linear(f"{prefix}.final_layer.linear", width, TOKEN_CHANNELS)
    return shapes


def _qwen3_shapes(cfg: dict, vocab: int) -> Shapes:
    hidden, head_dim = cfg["hidden_size"], cfg["head_dim"]
    q_width, kv_width = cfg["num_attention_heads"] * head_dim, cfg["num_key_value_heads"] * head_dim
    shapes: Shapes = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(cfg["num_hidden_layers"]):
        layer = f"model.layers.{i}"
        shapes |= {
            f"{layer}.self_attn.q_proj.weight": (q_width, hidden),
            f"{layer}.self_attn.k_proj.weight": (kv_width, hidden),
            f"{layer}.self_attn.v_proj.weight": (kv_width, hidden),
            f"{layer}.self_attn.o_proj.weight": (hidden, q_width),
            f"{layer}.self_attn.q_norm.weight": (head_dim,),
            f"{layer}.self_attn.k_norm.weight": (head_dim,),
            f"{layer}.mlp.gate_proj.weight": (cfg["intermediate_size"], hidden),
            f"{layer}.mlp.up_proj.weight": (cfg["intermediate_size"], hidden),
            f"{layer}.mlp.down_proj.weight": (hidden, cfg["intermediate_size"]),
            f"{layer}.input_layernorm.weight": (hidden,),
            f"{layer}.post_attention_layernorm.weight": (hidden,),
        }
    shapes |= {"model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden)}
    return shapes


def _c2i_shapes(parallel_num: int) -> Shapes:
    dim, ffn = C2I_DIM, C2I_FFN_HIDDEN
    shapes = _autoencoder_shapes("vae.", TINY_DDCONFIG, gan_decoder=False)
    shapes["cls_embedding.weight"] = (C2I_NUM_CLASSES + 1, dim * C2I_CLASS_TOKENS)
    if parallel_num > 1:
        shapes["query_token"] = (1, parallel_num - 1, dim)
    shapes |= _swiglu("proj_in", TOKEN_CHANNELS, int(1.5 * dim), dim, bias=True)
    shapes["emb_norm.weight"] = (dim,)
    for i in range(C2I_LAYERS):
        layer = f"layers.{i}"
        shapes |= _linear(f"{layer}.attention.wqkv", dim, 3 * dim, bias=False)
        shapes |= _linear(f"{layer}.attention.wo", dim, dim, bias=False)
        shapes |= _swiglu(f"{layer}.feed_forward", dim, ffn, dim, bias=False)
        shapes |= {f"{layer}.attention_norm.weight": (dim,), f"{layer}.ffn_norm.weight": (dim,)}
    shapes["norm.weight"] = (dim,)
    shapes["pos_for_diff.weight"] = (C2I_GRID * C2I_GRID, dim)
    block_kind, adaln = ("trans", 2) if parallel_num > 1 else ("res", 1)
    shapes |= _diff_head_shapes("head.net", dim, C2I_HEAD_WIDTH, C2I_HEAD_BLOCKS, adaln, block_kind)
    return shapes


# ----------------------------------------------------------------------------------------------------------------
# Random draws
# ----------------------------------------------------------------------------------------------------------------

def _draw_one(key: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    noise = torch.randn(shape, generator=gen, dtype=torch.float32)
    embedding_std = _EMBEDDING_STD.get(key.removesuffix(".weight").rsplit(".", 1)[-1])
    if embedding_std is not None:
        return noise * embedding_std
    if key.endswith(".bias"):
        return noise * 0.05
    if len(shape) == 1:
        return 1.0 + 0.1 * noise
    return noise / math.sqrt(math.prod(shape[1:]))


def _draw(shapes: Shapes, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {key: _draw_one(key, shape, gen) for key, shape in shapes.items()}


def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


# ----------------------------------------------------------------------------------------------------------------
# Text-to-image directory
# ----------------------------------------------------------------------------------------------------------------

def _byte_symbols() -> list[str]:
    """The 256 byte-level symbols in GPT-2 / Qwen vocabulary order (printable bytes first, then the rest)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(rest))]


def _build_tokenizer() -> Tokenizer:
    vocab = {symbol: i for i, symbol in enumerate(_byte_symbols())}
    for left, right in _BPE_MERGES:
        vocab.setdefault(left + right, len(vocab))
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=list(_BPE_MERGES), dropout=None, unk_token=None,
                                     continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
                                     byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tokenizer


def _write_tokenizer(directory: Path, tokenizer: Tokenizer) -> None:
    tokenizer.save(str(directory / "tokenizer.json"))
    added = {
        str(tokenizer.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                        "single_word": False, "special": True}
        for t in SPECIAL_TOKENS
    }
    extra = [t for t in SPECIAL_TOKENS if t not in ("<|endoftext|>", "<|im_end|>")]
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": extra,
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    _write_json(directory / "tokenizer_config.json", config)

    def token_entry(content: str) -> dict:
        return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}

    special_map = {"additional_special_tokens": extra, "eos_token": token_entry("<|im_end|>"),
                   "pad_token": token_entry("<|endoftext|>")}
    _write_json(directory / "special_tokens_map.json", special_map)


def _qwen3_config(tokenizer: Tokenizer) -> dict:
    cfg = TINY_QWEN3
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": tokenizer.token_to_id("<|endoftext|>"),
        "eos_token_id": tokenizer.token_to_id("<|im_end|>"),
        "head_dim": cfg["head_dim"],
        "hidden_act": "silu",
        "hidden_size": cfg["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": cfg["intermediate_size"],
        "max_position_embeddings": 40960,
        "max_window_layers": cfg["num_hidden_layers"],
        "model_type": "qwen3",
        "num_attention_heads": cfg["num_attention_heads"],
        "num_hidden_layers": cfg["num_hidden_layers"],
        "num_key_value_heads": cfg["num_key_value_heads"],
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": tokenizer.get_vocab_size(with_added_tokens=True),
    }


def _write_sharded(directory: Path, tensors: dict[str, torch.Tensor], num_shards: int) -> None:
    """Split ``tensors`` (in order) into ``num_shards`` contiguous groups of about equal bytes, HF-style."""
    keys = list(tensors)
    sizes = [t.numel() * t.element_size() for t in tensors.values()]
    total = sum(sizes)
    bytes_before = [sum(sizes[:i]) for i in range(len(sizes))]
    starts = [0]
    for k in range(1, num_shards):
        cut = next((i for i, b in enumerate(bytes_before) if b * num_shards >= k * total), len(keys))
        starts.append(min(max(cut, starts[-1] + 1), len(keys) - (num_shards - k)))
    starts.append(len(keys))
    weight_map: dict[str, str] = {}
    for k in range(num_shards):
        name = f"model-{k + 1:05d}-of-{num_shards:05d}.safetensors"
        shard = {key: tensors[key] for key in keys[starts[k]:starts[k + 1]]}
        save_file(shard, str(directory / name), metadata=_SAFETENSORS_METADATA)
        weight_map |= dict.fromkeys(shard, name)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    _write_json(directory / "model.safetensors.index.json", index)


def _check_parallel_num(parallel_num: int, max_p: int, writer: str) -> None:
    side = math.isqrt(parallel_num) if parallel_num > 0 else 0
    if side * side != parallel_num or not 1 <= parallel_num <= max_p or C2I_GRID % side:
        raise InvalidRequestError(
            f"{writer}: parallel_num={parallel_num} is not supported; it must be a square number of tokens per "
            f"AR step whose side divides {C2I_GRID}, at most {max_p} (the released models use 1, 4, 16 or 64).")


def write_tiny_t2i(path: str | Path, *, parallel_num: int = 64, seed: int = 0, gan_decoder: bool = False,
                   num_shards: int = 2) -> Path:
    """Write a tiny random text-to-image model directory at ``path`` (created if missing) and return it.

    Layout and key names are the release's (``modeling/t2i_pipeline.py`` opens these files): Qwen3 backbone of
    width 64 (2 layers, 4 query heads, 2 KV heads, head dim 16, SwiGLU 96), a DiffHead of width 256 (2 TransBlocks
    with 128-channel attention heads, 2 adaLN linears, SwiGLU, sigmoid output) predicting ``parallel_num`` tokens
    per step, a projector 32 -> 64 -> 64 and a 16x binary-token decoder (optionally the GAN variant).
    """
    _check_parallel_num(parallel_num, MAX_QUERY_TOKENS + 1, "write_tiny_t2i")
    tokenizer = _build_tokenizer()
    llm_config = _qwen3_config(tokenizer)
    llm_shapes = _qwen3_shapes(TINY_QWEN3, llm_config["vocab_size"])
    if not 1 <= num_shards <= len(llm_shapes):
        raise InvalidRequestError(
            f"write_tiny_t2i: num_shards={num_shards} is out of range; the tiny Qwen3 backbone has "
            f"{len(llm_shapes)} tensors, so pass 1 <= num_shards <= {len(llm_shapes)}.")
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    gen = _generator(seed)

    _write_tokenizer(directory, tokenizer)
    _write_json(directory / "config.json", llm_config)
    llm = _draw(llm_shapes, gen)
    _write_sharded(directory, {k: v.to(torch.bfloat16) for k, v in llm.items()}, num_shards)

    hidden = TINY_QWEN3["hidden_size"]
    projector = _draw({**_linear("fc1", TOKEN_CHANNELS, hidden), **_linear("fc2", hidden, hidden)}, gen)
    save_file(projector, str(directory / "projector.safetensors"), metadata=_SAFETENSORS_METADATA)

    head_config = {
        "ch_target": TOKEN_CHANNELS,
        "ch_cond": hidden,
        "ch_latent": T2I_HEAD_WIDTH,
        "depth_latent": T2I_HEAD_BLOCKS,
        "depth_adanln": T2I_HEAD_ADALN,
        "time_shift": 1.0,
        "time_schedule": "logit_normal",
        "P_mean": 0.0,
        "P_std": 1.0,
        "parallel_num": parallel_num,
        "diff_batch_mul": 1,
        "use_swiglu": True,
    }
    _write_json(directory / "vision_head_config.json", head_config)
    head = _draw(_diff_head_shapes("net", hidden, T2I_HEAD_WIDTH, T2I_HEAD_BLOCKS, T2I_HEAD_ADALN, "trans"), gen)
    save_file(head, str(directory / "vision_head.safetensors"), metadata=_SAFETENSORS_METADATA)

    _write_json(directory / "ae_config.json", {"ddconfig": TINY_DDCONFIG, "gan_decoder": gan_decoder})
    ae = _draw(_autoencoder_shapes("", TINY_DDCONFIG, gan_decoder), gen)
    save_file(ae, str(directory / "ae.safetensors"), metadata=_SAFETENSORS_METADATA)
    return directory


# ----------------------------------------------------------------------------------------------------------------
# Class-conditional checkpoint pair
# ----------------------------------------------------------------------------------------------------------------

def _quantizer_state() -> dict[str, torch.Tensor]:
    """Stand-in ``quantize.*`` entries of the autoencoder file: GFQ's bit masks and ±1 codebook (4 groups of 8 bits).

    The release's GFQ keeps these as non-persistent buffers and loads the file with strict=False, so they only
    check that a loader skips quantizer keys; their names are those the GFQ buffers would have.
    """
    bits = TOKEN_CHANNELS // C2I_QUANTIZER_CODEBOOKS
    mask = 2 ** torch.arange(bits)
    state = {f"quantize.mask_{i}": mask.clone() for i in range(C2I_QUANTIZER_CODEBOOKS)}
    codes = torch.arange(2 ** bits)
    state["quantize.codebook"] = ((codes.unsqueeze(-1) & mask) != 0).float() * 2.0 - 1.0
    return state


def write_tiny_c2i(path: str | Path, *, parallel_num: int = 16, seed: int = 0,
                   entry: str = "ema") -> tuple[Path, Path]:
    """Write a tiny random class-conditional checkpoint pair into directory ``path``; return (model, autoencoder).

    The model file is ``torch.save({entry: state_dict})`` with the release's BitDance keys (``model.py`` for
    ``parallel_num == 1``: no ``query_token``, MlpEncoder head with 1 adaLN linear; ``model_parallel.py`` otherwise:
    TransEncoder head with 64-channel attention heads and 2 adaLN linears). ``entry`` is ``"ema"``, ``"model"``, or
    ``"both"`` (``ema`` holds the same draw as the other two modes, ``model`` a second, different draw). The model's
    own ``vae.*`` weights differ from the autoencoder file's, which the release loads over them.
    """
    _check_parallel_num(parallel_num, C2I_GRID * C2I_GRID, "write_tiny_c2i")
    if entry not in ("ema", "model", "both"):
        raise InvalidRequestError(f"write_tiny_c2i: entry={entry!r} is not one of 'ema', 'model', 'both'.")
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    gen = _generator(seed)

    shapes = _c2i_shapes(parallel_num)
    primary = _draw(shapes, gen)
    ae_state = _draw(_autoencoder_shapes("", TINY_DDCONFIG, gan_decoder=False), gen) | _quantizer_state()
    if entry == "both":
        checkpoint = {"ema": primary, "model": _draw(shapes, gen)}
    else:
        checkpoint = {entry: primary}

    model_path = directory / f"BitDance_tiny_{parallel_num}x.pt"
    ae_path = directory / "ae_tiny_d16c32.pt"
    torch.save(checkpoint, model_path)
    torch.save({"state_dict": ae_state}, ae_path)
    return model_path, ae_path


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
