"""Memory estimates from the model's shapes, for the scheduler's budget: what a continuous batch holds while it
exists, and what a joining request needs for a moment. Estimates, not measurements: they count the tensors that
dominate (the KV cache, the batch's static buffers, the activations of the largest pass) and ignore allocator
rounding and small temporaries.

- ``batch_bytes``: the KV cache (rows × positions × layers × 2 × KV heads × head dim × element size), the static
  buffers of ``SlotBatch`` (``SlotBatch.buffer_bytes``, the same count its ``nbytes`` reports) and the activations
  of one AR step over all rows (backbone: q/k/v, attention output, gate/up, a few hidden-sized tensors per token;
  head: about a dozen float32 head-width tensors per token; with the PyTorch attention provider, the dense float32
  score matrices).
  With fp8 weights (W8A8) the activations also get their e4m3 codes and per-token scales before each GEMM (one
  byte per element of the widest GEMM input, the FFN's); int8 weights are weight-only and add nothing there.
  A family with leading unguided AR steps (the class-conditional step 0) keeps its join scratch with the batch
  (``join_scratch_bytes``: the graphs of those steps are built on it once per batch).
- ``join_bytes``: what a join needs for a moment, the larger of: the prefill pass, which always computes the
  batch's fixed shape (all its rows × the group's prefill length, dense scores with the PyTorch provider), plus the
  join scratch when it is not kept with the batch; and decoding the request's images (``decode_bytes``: one
  decoder pass over a chunk of its images at its peak, plus all its decoded images).
- ``decoder_bytes_per_pixel``: what one decoder pass keeps alive at its peak, per output pixel of one image
  (below); ``decode_chunk``: the images one pass may take so that this stays within ``DECODE_PASS_BYTES``.
- ``peak_bytes``: what the device holds at the peak of serving one request alone: the weights as held on the device
  (``weights_bytes``: 8-bit codes and their scales when quantized), its batch and its join.

The weights are not part of the scheduler's ``memory_budget`` (it bounds what the batches add); ``peak_bytes`` is for
``Runtime.describe()["memory"]`` and ``Runtime.memory_estimate``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .slot_batch import SlotBatch

FLOAT32 = 4
HEAD_TENSORS_PER_TOKEN = 12   # float32 head-width tensors alive in one head evaluation (x, h, adaLN chunks, ...)
DECODE_PASS_BYTES = 4 << 30   # the activations one decoder pass may hold at its peak (images are chunked to fit)


@dataclass(frozen=True)
class ModelDims:
    layers: int
    kv_heads: int
    heads: int
    head_dim: int
    width: int
    ffn_width: int
    element_bytes: int
    head_width: int
    channels: int
    parallel: int
    decoder_width: int
    dense_attention: bool
    decoder_bytes_per_pixel: float    # decoder_bytes_per_pixel(layout, element size, fused): peak bytes per pixel
    decoder_out_channels: int

    token_bytes: int
    quantization: str | None = None   # None, "fp8" or "int8": how the backbone's and head's linears are held
    weights_bytes: int = 0            # every part's parameters and buffers as held on the device

    @classmethod
    def of(cls, engine, family) -> "ModelDims":
        layers, kv_heads, head_dim = engine.cache_shape
        decoder = family.model.decoder_layout
        return cls(layers=layers, kv_heads=kv_heads, heads=engine.num_heads, head_dim=head_dim, width=engine.width,
                   ffn_width=engine.ffn_width, element_bytes=engine.hidden_dtype.itemsize,
                   token_bytes=engine.token_dtype.itemsize,
                   head_width=engine.head.cfg.width, channels=engine.token_channels, parallel=engine.parallel,
                   decoder_width=decoder.level_channels[0],
                   decoder_bytes_per_pixel=decoder_bytes_per_pixel(
                       decoder, next(family.model.decoder.parameters()).dtype.itemsize, engine.fused_decoder),
                   decoder_out_channels=decoder.out_channels,
                   dense_attention=engine.ops.chosen.get("block_attention_decode") == "torch",
                   quantization=family.quantization, weights_bytes=family.weights_bytes())

    def kv_bytes_per_position(self) -> int:
        return self.layers * 2 * self.kv_heads * self.head_dim * self.element_bytes

    def backbone_activations(self, tokens: int, keys: int) -> int:
        """One backbone pass over ``tokens`` tokens attending to ``keys`` positions each."""
        per_token = (4 * self.width + (self.heads + 2 * self.kv_heads) * self.head_dim + 3 * self.ffn_width)
        scores = 2 * self.heads * keys * FLOAT32 if self.dense_attention else 0
        fp8_codes = max(self.width, self.ffn_width) + FLOAT32 if self.quantization == "fp8" else 0
        return tokens * (per_token * self.element_bytes + scores + fp8_codes)


def join_scratch_bytes(d: ModelDims, rows: int, length: int, leading: int) -> int:
    """The static tensors of a batch's joins (``Engine._join_state``), for ``rows`` prefill rows of ``length``
    positions and ``leading`` unguided AR steps: a scratch KV cache of ``length + leading·P`` positions (and its
    int32 lengths), the hidden states ``[rows, P, W]``, the noise keys (int64 seed, int32 row per row) and the leading
    steps' tokens ``[leading, rows, P, C]``."""
    cache = rows * (length + leading * d.parallel) * d.kv_bytes_per_position() + rows * 4
    hidden = rows * d.parallel * d.width * d.element_bytes
    keys = rows * (8 + 4)
    tokens = leading * rows * d.parallel * d.channels * d.token_bytes
    return cache + hidden + keys + tokens


def batch_bytes(d: ModelDims, slots: int, mult: int, max_len: int, num_steps: int, join_length: int = 0,
                leading: int = 0) -> int:
    """A batch's cache, static buffers and one AR step's activations; with ``leading`` unguided AR steps also its
    kept join scratch (``join_length``: the group's prefill length)."""
    rows = slots * mult
    cache = rows * max_len * d.kv_bytes_per_position()
    buffers = SlotBatch.buffer_bytes(slots, mult, d.parallel, d.width, d.channels, d.element_bytes, d.token_bytes)
    tokens = rows * d.parallel
    step = max(d.backbone_activations(tokens, max_len), tokens * HEAD_TENSORS_PER_TOKEN * d.head_width * FLOAT32)
    kept = join_scratch_bytes(d, rows, join_length, leading) if leading else 0
    return cache + buffers + step + kept


def join_bytes(d: ModelDims, rows: int, length: int, leading: int, images: int, height: int, width: int,
               decodes: bool) -> int:
    """A join's moment: the prefill of the batch's ``rows`` rows padded to ``length`` (plus the join scratch when
    it is made per join: no ``leading`` steps), or decoding ``images`` images of ``height × width``, the larger."""
    prefill = d.backbone_activations(rows * length, length)
    if not leading:
        prefill += join_scratch_bytes(d, rows, length, 0)
    decode = decode_bytes(d, images, height, width) if decodes else 0
    return max(prefill, decode)


def peak_bytes(d: ModelDims, batch: int, join: int) -> int:
    """Weights plus a batch (``batch_bytes``) plus a join (``join_bytes``) at once: the estimated device peak."""
    return d.weights_bytes + batch + join


def decoder_bytes_per_pixel(layout, element_bytes: int, fused: bool = True) -> float:
    """Bytes one decoder pass keeps alive at its peak, per output pixel of one image; ``layout`` a
    ``DecoderLayout``, activations of ``element_bytes`` each; ``fused``: the engine's ``EngineTokenDecoder``
    (``engine/token_decoder.py``), else the reference ``TokenDecoder`` module (the PyTorch operations' engine).

    Level L (0 = full resolution) has ``1/4^L`` pixels per output pixel; counted in channels there, the stages are:
    ``conv_in``: z, its noise map (GAN), their concatenation and the output. A residual block of widths a -> b:
    fused ``max(2a + b, a + 2b)`` (x, the normed x and conv1's output; then x, h normed in place and conv2's output;
    then x, that output and the shortcut); reference ``max(4a, a + 4b)`` (x, the norm, its sigmoid and the
    product; then x, h, h's norm, sigmoid and product). The token-styled norm: fused in place (no extra map),
    reference ``4s`` (x, the norm, the product, the sum). An upsampler of width c: ``9c`` (its input, held until
    it returns, its 4c conv output and the 4c depth-to-space copy). The final norm and ``conv_out``: fused ``c0 + out`` (in place), reference ``4c0``.
    The peak is the largest stage, plus the pass's output (``out_channels`` at full resolution). Not counted:
    cuDNN's workspace and allocator rounding (a margin: ``DECODE_PASS_BYTES`` is far below a GPU's memory); under
    CUDA graphs the graphs' shared private pool keeps this peak reserved between passes.
    """
    levels = layout.level_channels
    deepest = len(levels) - 1
    z = layout.z_channels

    def block(a: int, b: int) -> int:
        return max(2 * a + b, a + 2 * b) if fused else max(4 * a, a + 4 * b)

    stages = [(z * (3 if layout.gan_decoder else 1) + layout.conv_in_channels - z + levels[-1]) / 4 ** deepest,
              block(levels[-1], levels[-1]) / 4 ** deepest]
    for level in range(deepest, -1, -1):
        a, b = layout.style_channels(level), levels[level]
        if not fused:
            stages.append(4 * a / 4 ** level)
        stages.append(block(a, b) / 4 ** level)
        stages.append(block(b, b) / 4 ** level)
        if level > 0:
            stages.append(9 * b / 4 ** level)
    stages.append(levels[0] + layout.out_channels if fused else 4 * levels[0])
    return (max(stages) + layout.out_channels) * element_bytes


def decode_chunk(d: ModelDims, height: int, width: int, limit: int = DECODE_PASS_BYTES) -> int:
    """Images one decoder pass takes at most, so that its peak (``decoder_bytes_per_pixel``) stays within
    ``limit`` bytes: a power of two (at least 1), so that a batch of many images runs in passes of one size (one
    CUDA graph). E.g. the released decoder (ch 256, ch_mult 1 1 2 2 4) in bf16, 4 GiB: 32 images of 256², 2 of
    1024² (batch 256 at 256²: 8 passes; batch 16 at 1024²: 8 passes)."""
    return images_per_pass(d.decoder_bytes_per_pixel, height, width, limit)


def images_per_pass(bytes_per_pixel: float, height: int, width: int, limit: int = DECODE_PASS_BYTES) -> int:
    """``decode_chunk`` from a decoder's ``decoder_bytes_per_pixel``: the largest power of two of images whose
    pass peak fits ``limit`` (at least 1)."""
    fit = max(1, int(limit // (height * width * bytes_per_pixel)))
    return 1 << (fit.bit_length() - 1)


def decode_bytes(d: ModelDims, images: int, height: int, width: int) -> int:
    """Decoding ``images`` images of ``height × width``: one pass over a chunk of them (``decode_chunk``) at its
    peak, plus the decoded images of all of them."""
    chunk = min(images, decode_chunk(d, height, width))
    per_image = height * width * d.decoder_bytes_per_pixel
    return int(chunk * per_image) + images * height * width * d.decoder_out_channels * d.element_bytes
