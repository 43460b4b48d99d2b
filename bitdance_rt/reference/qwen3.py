"""The Qwen3 decoder stack of the text-to-image models, as plain PyTorch (no LM head).

Math as transformers' Qwen3: pre-RMSNorm layers (float32 normalisation, cast back, times weight), per-head RMSNorm
on q and k before rotate-half RoPE, grouped-query attention with scale ``head_dim ** -0.5`` (a masked
softmax), and a SwiGLU MLP ``down(silu(gate(x)) * up(x))``; a final RMSNorm. Attention goes through
``F.scaled_dot_product_attention``, the same call transformers' default ("sdpa") path makes, so that CPU float32
hidden states are bitwise those of the release's Hugging Face model; ``attn_mask=None`` means causal
(``is_causal=True``, as transformers' prefill without a mask).

Shapes: ``inputs_embeds [B, T, hidden]``, ``positions`` int64 ``[T]``, ``attn_mask`` None (causal, only with
an empty cache) or bool broadcastable to ``[B, 1, T, L]`` (True = may attend) with ``L = cache.length + T``; output ``[B, T, hidden]``.
State-dict keys are transformers' ``Qwen3Model`` keys (a ``Qwen3ForCausalLM`` file's keys minus ``model.``).
Modules hold parameters only, so the backbone can be built on the ``meta`` device and filled with
``load_state_dict(..., assign=True)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bitdance_rt.errors import CheckpointError, InvalidRequestError
from bitdance_rt.reference.embedding_table import embedding_table
from bitdance_rt.reference.kv_cache import KVCache
from bitdance_rt.reference.rope import apply_rotate_half, rotate_half_tables

# transformers' Qwen3Config gives head_dim this value when config.json does not name it.
HF_DEFAULT_HEAD_DIM = 128


def _field(d: dict, name: str, source: str, kind: type) -> Any:
    """A required positive int (``kind=int``) or positive finite number (``kind=float``) of a config dict."""
    if name not in d or d[name] is None:
        raise CheckpointError(f"{source}: field '{name}' is missing; a Qwen3 config.json must set it")
    value = d[name]
    valid = isinstance(value, int) if kind is int else isinstance(value, (int, float)) and math.isfinite(value)
    if isinstance(value, bool) or not valid or value <= 0:
        expected = "a positive integer" if kind is int else "a positive number"
        raise CheckpointError(f"{source}: field '{name}' must be {expected}, found {value!r}; fix the config file")
    return kind(value)


def _rope_theta(d: dict, source: str) -> float:
    """rope_theta from ``rope_scaling`` / ``rope_parameters`` (newer files) or the top level; default RoPE only."""
    params = d.get("rope_scaling") or d.get("rope_parameters") or {}
    if not isinstance(params, dict):
        raise CheckpointError(f"{source}: field 'rope_parameters' must be an object, found {params!r}")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in (None, "default"):
        raise CheckpointError(
            f"{source}: field 'rope_type' is {rope_type!r}; only the default (unscaled) RoPE is supported")
    if params.get("rope_theta") is not None:
        return _field(params, "rope_theta", source, float)
    return _field(d, "rope_theta", source, float)


@dataclass(frozen=True)
class Qwen3Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    attention_bias: bool = False
    max_position_embeddings: int = 40960

    @classmethod
    def from_hf_dict(cls, d: dict, source: str) -> "Qwen3Config":
        """Read a HF ``config.json`` dict; ``source`` names the file in error messages.

        A missing ``head_dim`` takes transformers' Qwen3 default (128), which is what the release's loader uses.
        """
        if d.get("model_type") != "qwen3":
            raise CheckpointError(
                f"{source}: field 'model_type' is {d.get('model_type')!r}, expected 'qwen3'; "
                "point the runtime at the BitDance text-to-image checkpoint directory")
        if d.get("use_sliding_window"):
            raise CheckpointError(f"{source}: field 'use_sliding_window' is true; sliding-window attention "
                                  "is not supported, set it to false")
        if d.get("hidden_act", "silu") != "silu":
            raise CheckpointError(f"{source}: field 'hidden_act' is {d['hidden_act']!r}, expected 'silu'")
        attention_bias = d.get("attention_bias", False)
        if not isinstance(attention_bias, bool):
            raise CheckpointError(f"{source}: field 'attention_bias' must be true or false, found {attention_bias!r}")
        config = cls(
            vocab_size=_field(d, "vocab_size", source, int),
            hidden_size=_field(d, "hidden_size", source, int),
            intermediate_size=_field(d, "intermediate_size", source, int),
            num_hidden_layers=_field(d, "num_hidden_layers", source, int),
            num_attention_heads=_field(d, "num_attention_heads", source, int),
            num_key_value_heads=_field(d, "num_key_value_heads", source, int),
            head_dim=_field({"head_dim": HF_DEFAULT_HEAD_DIM, **d}, "head_dim", source, int),
            rms_norm_eps=_field(d, "rms_norm_eps", source, float),
            rope_theta=_rope_theta(d, source),
            attention_bias=attention_bias,
            max_position_embeddings=_field({"max_position_embeddings": 40960, **d}, "max_position_embeddings",
                                           source, int),
        )
        if config.num_attention_heads % config.num_key_value_heads:
            raise CheckpointError(
                f"{source}: field 'num_key_value_heads' ({config.num_key_value_heads}) must divide "
                f"num_attention_heads ({config.num_attention_heads})")
        if config.head_dim % 2:
            raise CheckpointError(f"{source}: field 'head_dim' must be even for RoPE, found {config.head_dim}")
        return config

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of every parameter of :class:`Qwen3Backbone`, by state-dict key."""
        hidden, inner, d = self.hidden_size, self.intermediate_size, self.head_dim
        q_width, kv_width = self.num_attention_heads * d, self.num_key_value_heads * d
        shapes: dict[str, tuple[int, ...]] = {"embed_tokens.weight": (self.vocab_size, hidden)}
        for i in range(self.num_hidden_layers):
            attn, mlp = f"layers.{i}.self_attn", f"layers.{i}.mlp"
            projections = {"q_proj": (q_width, hidden), "k_proj": (kv_width, hidden),
                           "v_proj": (kv_width, hidden), "o_proj": (hidden, q_width)}
            for name, shape in projections.items():
                shapes[f"{attn}.{name}.weight"] = shape
                if self.attention_bias:
                    shapes[f"{attn}.{name}.bias"] = (shape[0],)
            shapes[f"{attn}.q_norm.weight"] = (d,)
            shapes[f"{attn}.k_norm.weight"] = (d,)
            shapes[f"layers.{i}.input_layernorm.weight"] = (hidden,)
            shapes[f"layers.{i}.post_attention_layernorm.weight"] = (hidden,)
            shapes[f"{mlp}.gate_proj.weight"] = (inner, hidden)
            shapes[f"{mlp}.up_proj.weight"] = (inner, hidden)
            shapes[f"{mlp}.down_proj.weight"] = (hidden, inner)
        shapes["norm.weight"] = (hidden,)
        return shapes


def rms_norm_hf(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim as transformers' Qwen3: normalise in float32 (float64 for float64 inputs), cast
    back to ``x.dtype``, then times weight."""
    wide = x.to(torch.promote_types(x.dtype, torch.float32))
    normalised = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normalised.to(x.dtype)


class RMSNorm(nn.Module):
    """``weight * (x / sqrt(mean(x^2) + eps))`` by :func:`rms_norm_hf`."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm_hf(x, self.weight, self.eps)


class Qwen3Attention(nn.Module):
    def __init__(self, config: Qwen3Config):
        super().__init__()
        d, bias = config.head_dim, config.attention_bias
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, d
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * d, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * d, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * d, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * d, config.hidden_size, bias=bias)
        self.q_norm = RMSNorm(d, config.rms_norm_eps)
        self.k_norm = RMSNorm(d, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attn_mask: torch.Tensor | None,
                cache: KVCache | None, layer_index: int) -> torch.Tensor:
        batch, length, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(batch, length, self.num_heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(batch, length, self.num_kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q = apply_rotate_half(q, cos, sin)
        k = apply_rotate_half(k, cos, sin)
        if cache is not None:
            k, v = cache.write(layer_index, k, v)
        # Query head h reads KV head h // (num_heads / num_kv_heads).
        group = self.num_heads // self.num_kv_heads
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None,
                                             scale=self.head_dim ** -0.5)
        out = out.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim)
        return self.o_proj(out)


class Qwen3MLP(nn.Module):
    def __init__(self, config: Qwen3Config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Qwen3DecoderLayer(nn.Module):
    def __init__(self, config: Qwen3Config):
        super().__init__()
        self.self_attn = Qwen3Attention(config)
        self.mlp = Qwen3MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attn_mask: torch.Tensor,
                cache: KVCache | None, layer_index: int) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attn_mask, cache, layer_index)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen3Backbone(nn.Module):
    """Embeddings, decoder layers and the final RMSNorm of a Qwen3 model."""

    def __init__(self, config: Qwen3Config):
        super().__init__()
        self.config = config
        self.embed_tokens = embedding_table(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Qwen3DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``[..., hidden]`` of int64 ``ids``."""
        return self.embed_tokens(ids)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        """An empty KV cache for ``batch`` rows of up to ``max_len`` positions, on the weights' device and dtype."""
        weight = self.embed_tokens.weight
        return KVCache(self.config.num_hidden_layers, batch, self.config.num_key_value_heads, max_len,
                       self.config.head_dim, device=weight.device, dtype=weight.dtype)

    def forward(self, inputs_embeds: torch.Tensor, positions: torch.Tensor, attn_mask: torch.Tensor | None,
                cache: KVCache | None = None) -> torch.Tensor:
        """Hidden states after the final norm, ``[B, T, hidden]``; appends the new keys/values to ``cache``."""
        self._check_inputs(inputs_embeds, positions, attn_mask, cache)
        cos, sin = rotate_half_tables(positions, self.config.head_dim, self.config.rope_theta)
        x = inputs_embeds
        for index, layer in enumerate(self.layers):
            x = layer(x, cos, sin, attn_mask, cache, index)
        if cache is not None:
            cache.advance(inputs_embeds.shape[1])
        return self.norm(x)

    def _check_inputs(self, inputs_embeds: torch.Tensor, positions: torch.Tensor, attn_mask: torch.Tensor | None,
                      cache: KVCache | None) -> None:
        hidden = self.config.hidden_size
        if inputs_embeds.ndim != 3 or inputs_embeds.shape[2] != hidden:
            raise InvalidRequestError(
                f"Qwen3Backbone: inputs_embeds must be [B, T, {hidden}], found {tuple(inputs_embeds.shape)}")
        batch, length, _ = inputs_embeds.shape
        if positions.dtype != torch.int64 or tuple(positions.shape) != (length,):
            raise InvalidRequestError(
                f"Qwen3Backbone: positions must be int64 [{length}], found {positions.dtype} {tuple(positions.shape)}")
        cached = 0
        if cache is not None:
            cached = cache.length
            cache_batch = cache.keys[0].shape[0]
            if cache_batch != batch:
                raise InvalidRequestError(f"Qwen3Backbone: the KV cache holds {cache_batch} rows, inputs have {batch}")
            if cached + length > cache.max_len:
                raise InvalidRequestError(
                    f"Qwen3Backbone: {cached} cached + {length} new positions exceed the cache's {cache.max_len}; "
                    "allocate a longer cache with new_cache")
        if attn_mask is None:
            if cached:
                raise InvalidRequestError("Qwen3Backbone: attn_mask=None (causal) needs an empty cache; pass an "
                                          f"explicit mask when {cached} positions are cached")
            return
        expected = (batch, 1, length, cached + length)
        broadcastable = attn_mask.ndim == 4 and all(m in (1, e) for m, e in zip(attn_mask.shape, expected))
        if attn_mask.dtype != torch.bool or not broadcastable:
            raise InvalidRequestError(
                f"Qwen3Backbone: attn_mask must be bool and broadcastable to {list(expected)}, "
                f"found {attn_mask.dtype} {tuple(attn_mask.shape)}")
        if not bool(attn_mask.any(dim=-1).all()):
            raise InvalidRequestError("Qwen3Backbone: attn_mask has a query row that may attend to nothing")
