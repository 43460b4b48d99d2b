"""Quantized modules and the layer-level entry points.

- ``quantizable_linears`` picks every linear of the Qwen3 and class-conditional backbones and of both head kinds but
  the time-embedding MLP and the token projections.
- ``QuantizedLinear`` in a tiny diffusion head (float32, CPU): weight-only int8/fp8 gives bit for bit the output of
  the same head with each weight replaced by its dequantized copy; fp8 W8A8 equals dequantize-then-matmul of the
  reference's activation codes (relative error < 1e-6).
- ``quantize_linears`` with ``fetch`` on a meta-built head reads each quantized tensor once and gives the same module
  as quantizing a loaded head; ``weights_bytes`` counts codes, scales and float parameters, shared storage once;
  ``fuse_quantized_linears`` equals quantizing the concatenated weight and leaves the layers as views of it.
- ``fast_linear.quantized_linear`` (Triton kernels through the interpreter; ``torch._scaled_mm`` on the CPU where
  this torch build runs it) against ``quantized_linear_reference``: relative error < 1e-5 in float32, fp8 codes
  identical; a NaN in a token makes that token's outputs NaN on both paths and leaves the other tokens untouched.
"""

from __future__ import annotations

import copy

import pytest
import torch
from quant_testing import DEVICE, FLOAT32_TOL, assert_close, randn, rel_err
from torch import nn

from bitdance_rt.errors import InvalidRequestError, UnsupportedDeviceError
from bitdance_rt.quantization import (QuantizedLinear, dequantize, fuse_quantized_linears, quantizable_linears,
                                      quantize_fp8, quantize_int8, quantize_linears, quantized_linear_reference,
                                      weights_bytes)
from bitdance_rt.quantization.fast_linear import quantized_linear
from bitdance_rt.quantization.reference_linear import dequantize_activations, fp8_activation_quant_reference
from bitdance_rt.quantization.scaled_mm import fp8_gemm_scaled_mm
from bitdance_rt.reference.c2i_backbone import C2IBackbone, C2IConfig
from bitdance_rt.reference.diffusion_head import DiffusionHead, DiffusionHeadConfig
from bitdance_rt.reference.qwen3 import Qwen3Backbone, Qwen3Config

pytestmark = pytest.mark.usefixtures("single_thread")

FORMATS = [pytest.param("int8", None, None, id="int8"), pytest.param("fp8", None, None, id="fp8-weight-only"),
           pytest.param("fp8", 128, None, id="fp8-block-weight-only"),
           pytest.param("fp8", None, "token", id="fp8-token"), pytest.param("fp8", 128, "group", id="fp8-block-group")]
FAST_FORMATS = [p for p in FORMATS if p.values[2] is not None or p.values[0] == "int8"]  # weight-only fp8: no fast path


def tiny_head(kind: str = "trans", seed: int = 0) -> DiffusionHead:
    cfg = DiffusionHeadConfig(token_channels=8, cond_channels=96, width=128, depth=2, num_adaln=1, block_kind=kind,
                              attn_head_dim=64)
    torch.manual_seed(seed)
    head = DiffusionHead(cfg).eval().requires_grad_(False)
    with torch.no_grad():  # adaLN and outputs non-zero, biases non-zero
        for p in head.parameters():
            p.copy_(torch.randn_like(p) * (p.shape[-1] ** -0.5 if p.ndim == 2 else 0.1))
    return head


def head_inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 4, 8, generator=g), torch.rand(3, generator=g), torch.randn(3, 4, 96, generator=g)


def test_quantizable_linears():
    head = tiny_head()
    assert quantizable_linears(head) == [
        "cond_embed", "res_blocks.0.attn.wqkv", "res_blocks.0.attn.wo", "res_blocks.0.w1", "res_blocks.0.w2",
        "res_blocks.1.attn.wqkv", "res_blocks.1.attn.wo", "res_blocks.1.w1", "res_blocks.1.w2", "ada_ln_blocks.0",
        "final_layer.ada_ln_modulation"]
    assert quantizable_linears(tiny_head("res")) == [
        "cond_embed", "res_blocks.0.w1", "res_blocks.0.w2", "res_blocks.1.w1", "res_blocks.1.w2", "ada_ln_blocks.0",
        "final_layer.ada_ln_modulation"]
    with torch.device("cpu"):  # (an nn.Embedding's first init on meta costs seconds)
        qwen = Qwen3Backbone(Qwen3Config(vocab_size=50, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                         rms_norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=64))
        c2i = C2IBackbone(C2IConfig(dim=64, num_layers=1, num_heads=4, token_channels=32, parallel=4))
    layer = "layers.0."
    assert quantizable_linears(qwen) == [layer + n for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                             "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                                                             "mlp.down_proj")]
    assert quantizable_linears(c2i) == [layer + n for n in ("attention.wqkv", "attention.wo", "feed_forward.w1",
                                                            "feed_forward.w2")]


@pytest.mark.parametrize("fmt,block,act_quant", FORMATS)
def test_quantized_head_matches_dequantized_math(fmt, block, act_quant):
    head = tiny_head()
    names = quantizable_linears(head)
    quantized = copy.deepcopy(head)
    sizes = quantize_linears(quantized, names, fmt, block=block, act_quant=act_quant)
    assert set(sizes) == set(names)
    x, t, c = head_inputs()
    out = quantized(x, t, c)
    assert torch.isfinite(out).all()
    if act_quant is None:  # weight-only: the head with dequantized weights, bit for bit
        dequantized = copy.deepcopy(head)
        for name in names:
            layer = quantized.get_submodule(name)
            assert isinstance(layer, QuantizedLinear) and layer.act_quant is None
            with torch.no_grad():
                dequantized.get_submodule(name).weight.copy_(dequantize(layer.qweight, torch.float32))
        assert torch.equal(out, dequantized(x, t, c))
    else:  # W8A8: one layer against dequantize-then-matmul of the reference's activation codes
        layer = quantized.get_submodule("res_blocks.0.w1")
        h = randn(12, 128, seed=2, device="cpu")
        codes, scales = fp8_activation_quant_reference(h, 128 if act_quant == "group" else None)
        expected = nn.functional.linear(dequantize_activations(codes, scales), dequantize(layer.qweight), layer.bias)
        assert rel_err(layer(h), expected) < 1e-6
    print(f"\n{fmt} block={block} act_quant={act_quant}: tiny head output relative error vs float "
          f"{rel_err(out, head(x, t, c)):.2e}")


def test_quantize_linears_from_fetch_on_meta():
    """The loader's path: build on meta, quantize each linear from the file's tensors, then assign the rest."""
    loaded = tiny_head(seed=3)
    state = {k: v.clone() for k, v in loaded.state_dict().items()}
    reads = []

    def fetch(key: str) -> torch.Tensor:  # the file's keys carry the part's prefix ("net." in the T2I head file)
        reads.append(key)
        return state[key.removeprefix("net.")]

    with torch.device("meta"):
        meta = DiffusionHead(loaded.cfg)
    names = quantizable_linears(meta)
    quantize_linears(meta, names, "fp8", block=128, act_quant="group", fetch=fetch, prefix="net.")
    quantized_keys = {f"{n}.{p}" for n in names for p in ("weight", "bias")}
    assert sorted(reads) == sorted("net." + k for k in quantized_keys)
    rest = {k: v for k, v in state.items() if k not in quantized_keys}
    missing, unexpected = meta.load_state_dict(rest, strict=False, assign=True)
    assert not unexpected and all(k.rsplit(".", 1)[-1] in ("data", "scales", "bias") for k in missing)
    assert not any(p.is_meta for p in [*meta.parameters(), *meta.buffers()])

    reference = copy.deepcopy(loaded)
    quantize_linears(reference, names, "fp8", block=128, act_quant="group")
    x, t, c = head_inputs(4)
    assert torch.equal(meta.eval()(x, t, c), reference(x, t, c))


def test_weights_bytes():
    head = tiny_head()
    float_bytes = sum(p.numel() * 4 for p in head.parameters())
    assert weights_bytes(head) == float_bytes
    names = quantizable_linears(head)
    linears = [head.get_submodule(n) for n in names]
    weights = sum(lin.weight.numel() for lin in linears)
    channels = sum(lin.out_features for lin in linears)
    quantize_linears(head, names, "int8")
    # each quantized weight: 1 byte per code + a float32 scale per output channel; biases stay float32
    assert weights_bytes(head) == float_bytes - 4 * weights + weights + 4 * channels
    shared = nn.Module()
    base = torch.zeros(10, 4)
    shared.a, shared.b = nn.Parameter(base[:6]), nn.Parameter(base[6:])
    assert weights_bytes(shared) == 40 * 4


@pytest.mark.parametrize("fmt,block", [("int8", None), ("fp8", 128)])
def test_fuse_quantized_linears_shares_one_copy(fmt, block):
    """q/k/v of a tiny attention fused as the engine fuses float weights: the fused weight equals quantizing the
    concatenation, each layer becomes a view of it (same outputs, storage counted once)."""
    torch.manual_seed(9)
    layers = nn.ModuleDict({n: nn.Linear(128, rows) for n, rows in (("q", 256), ("k", 128), ("v", 128))})
    float_weight = torch.cat([layers[n].weight for n in "qkv"]).detach().clone()
    quantize_linears(layers, list("qkv"), fmt, block=block, act_quant="token" if fmt == "fp8" else None)
    x = randn(5, 128, seed=10, device="cpu")
    before = [layers[n](x) for n in "qkv"]
    size_before = weights_bytes(layers)
    fused, bias = fuse_quantized_linears([layers[n] for n in "qkv"])
    direct = quantize_fp8(float_weight, block) if fmt == "fp8" else quantize_int8(float_weight)
    assert torch.equal(fused.data.view(torch.uint8), direct.data.view(torch.uint8))
    assert torch.equal(fused.scales, direct.scales) and bias.shape == (512,)
    assert all(torch.equal(layers[n](x), y) for n, y in zip("qkv", before))
    assert layers["k"].data.data_ptr() == fused.data[256:].data_ptr()
    assert weights_bytes(layers) == size_before


def test_module_argument_errors():
    head = tiny_head()
    with pytest.raises(InvalidRequestError, match="'net.norm' is a LayerNorm, not an nn.Linear"):
        quantize_linears(nn.ModuleDict({"norm": nn.LayerNorm(4)}), ["norm"], "int8", prefix="net.")
    with pytest.raises(InvalidRequestError, match="int8 weights are weight-only"):
        QuantizedLinear(quantize_int8(head.cond_embed.weight), None, "token", torch.float32)
    with pytest.raises(InvalidRequestError, match="expects \\[128, 96\\]"):
        quantize_linears(head, ["cond_embed"], "int8", fetch=lambda key: torch.ones(3, 3))
    quantize_linears(head, ["cond_embed"], "int8")
    assert "int8 weights per channel, act_quant=None" in repr(head.cond_embed)


# ---------------------------------------------------------------- the fast path against the oracle

def layer_case(fmt: str, block, seed: int = 5, n: int = 200, k: int = 320):
    w = randn(n, k, seed=seed, device="cpu") * torch.logspace(-1, 1, n)[:, None]
    qw = (quantize_int8(w) if fmt == "int8" else quantize_fp8(w, block)).to(DEVICE)
    x = randn(2, 3, k, seed=seed + 1) * torch.logspace(-2, 1, 3, device=DEVICE)[None, :, None]
    return x, qw, randn(n, seed=seed + 2, scale=0.3)


@pytest.mark.parametrize("fmt,block,act_quant", FAST_FORMATS)
def test_fast_linear_matches_reference(fmt, block, act_quant):
    x, qw, bias = layer_case(fmt, block)
    y = quantized_linear(x, qw, bias, act_quant=act_quant)
    assert y.shape == (2, 3, 200)
    ref = quantized_linear_reference(x.cpu().double(), qw.to("cpu"), bias.cpu().double(), act_quant)
    assert_close(y, ref, FLOAT32_TOL)


def _scaled_mm_runs_here() -> str | None:
    try:
        codes = torch.ones(16, 16).to(torch.float8_e4m3fn)
        torch._scaled_mm(codes, codes.t(), torch.ones(16, 1), torch.ones(1, 16), out_dtype=torch.float32)
    except (RuntimeError, NotImplementedError, TypeError) as e:
        return f"torch {torch.__version__} does not run row-wise _scaled_mm on the CPU ({e}); GPU-only check"
    return None


@pytest.mark.skipif(DEVICE.type != "cpu" or _scaled_mm_runs_here() is not None,
                    reason=_scaled_mm_runs_here() or "CPU check (the GPU run is bench/ and the GPU session)")
def test_scaled_mm_matches_reference_on_the_cpu():
    x, qw, bias = layer_case("fp8", None, n=208, k=320)
    y = quantized_linear(x, qw, bias, act_quant="token", gemm="scaled_mm")
    ref = quantized_linear_reference(x.double(), qw, bias.double(), "token")
    assert_close(y, ref, FLOAT32_TOL)
    codes, scales = fp8_activation_quant_reference(x.reshape(-1, 320))
    bf16 = fp8_gemm_scaled_mm(codes, scales, qw, bias.bfloat16(), out_dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and rel_err(bf16, ref.reshape(6, 208)) < 1e-2


def test_scaled_mm_argument_errors():
    x, qw, _ = layer_case("fp8", 128, n=208, k=320)
    codes, scales = fp8_activation_quant_reference(x.reshape(-1, 320).cpu())
    with pytest.raises(InvalidRequestError, match="block-scaled weights go through kernels.fp8_gemm"):
        fp8_gemm_scaled_mm(codes, scales, qw.to("cpu"))
    channel = quantize_fp8(randn(200, 320, seed=6, device="cpu"))
    with pytest.raises(InvalidRequestError, match="multiples of 16, found K = 320, N = 200"):
        fp8_gemm_scaled_mm(codes, scales, channel)
    group_codes, group_scales = fp8_activation_quant_reference(x.reshape(-1, 320).cpu(), 128)
    square = quantize_fp8(randn(208, 320, seed=7, device="cpu"))
    with pytest.raises(InvalidRequestError, match="per-group scales go through kernels.fp8_gemm"):
        fp8_gemm_scaled_mm(group_codes, group_scales, square)
    assert issubclass(UnsupportedDeviceError, RuntimeError)  # what a refusing torch build's error becomes


@pytest.mark.parametrize("fmt,act_quant", [("int8", None), ("fp8", "token"), ("fp8", "group")])
def test_nan_token_gives_nan_outputs_on_both_paths(fmt, act_quant):
    x, qw, bias = layer_case(fmt, None, seed=8)
    x[1, 2, 17] = float("nan")
    y = quantized_linear(x, qw, bias, act_quant=act_quant)
    ref = quantized_linear_reference(x.cpu(), qw.to("cpu"), bias.cpu(), act_quant)
    for out in (y.cpu(), ref):
        assert torch.isnan(out[1, 2]).all()
    keep = torch.ones(2, 3, dtype=torch.bool)
    keep[1, 2] = False
    assert_close(y[keep], ref[keep].double(), FLOAT32_TOL)


def test_fast_linear_argument_errors():
    x, qw, bias = layer_case("fp8", None)
    with pytest.raises(InvalidRequestError, match="weight-only fp8 \\(act_quant=None\\) has no fast path"):
        quantized_linear(x, qw, bias, act_quant=None)
    with pytest.raises(InvalidRequestError, match="gemm must be one of"):
        quantized_linear(x, qw, bias, gemm="cublas")
    with pytest.raises(InvalidRequestError, match="x has 319 channels, the weight takes 320"):
        quantized_linear(x[..., :319], qw, bias)
