"""``EngineTokenDecoder``: the reference ``TokenDecoder``'s weights run through the engine's operations.

The same computation as ``reference/token_decoder.py`` (the oracle), restructured for speed and memory:

- every GroupNorm-then-swish is one ``ops.group_norm_silu`` (the final norm in place); the token-styled GroupNorm
  is one ``ops.token_styled_group_norm`` in place (its scale and shift, ``gamma(std)`` and ``beta(mean)`` of the
  token map's statistics, are ``[N, C]`` per image and channel; no swish follows it: its output is also the next
  residual block's shortcut); the second norm of a residual block runs in place, and the residual add is an
  in-place add into conv2's output;
- on CUDA, activations and conv weights are channels-last (NHWC; cuDNN's fast layout): the conv weights of the
  module are re-laid out once, in place (same values, no second copy: the module computes the same function), and
  depth-to-space is one copy in NHWC order;
- a pass over N images runs in chunks of ``memory.images_per_pass`` images (the peak per image:
  ``memory.decoder_bytes_per_pixel``), so large batches stay within ``memory.DECODE_PASS_BYTES``; a chunk's
  arithmetic depends only on its own images and size;
- a GAN decoder's noise map is drawn once for the whole pass, by the reference's own call
  (``TokenDecoder._noise_like``: ``torch.randn(z.shape, generator=generator, dtype=z.dtype)`` on the generator's
  device), outside any graph, then sliced per chunk;
- on CUDA (kernel providers), each (chunk size, token grid) pass is captured into a CUDA graph on first use, with
  static token (and noise) buffers, all graphs sharing one private memory pool; the output is copied out of the
  graph's static buffer after every replay.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..reference.token_decoder import NORM_EPS, NORM_GROUPS, TokenDecoder, depth_to_space, token_statistics
from .cuda_graphs import CapturedStep, graphs_available
from .memory import DECODE_PASS_BYTES, decoder_bytes_per_pixel, images_per_pass

# the engine operations a decoder pass calls (all captured into its CUDA graphs)
DECODER_OPS = ("group_norm_silu", "token_styled_group_norm")


def depth_to_space_nhwc(x: Tensor) -> Tensor:
    """``depth_to_space`` (DCR, ``[B, 4C, H, W] -> [B, C, 2H, 2W]``) for a channels-last ``x``, giving a
    channels-last result in one copy: NHWC memory ``[B, H, W, (2i+j)·C + c]`` -> ``[B, 2H+i, 2W+j, c]``."""
    batch, channels, height, width = x.shape
    nhwc = x.permute(0, 2, 3, 1)                                    # a view of the channels-last memory
    blocks = nhwc.reshape(batch, height, width, 2, 2, channels // 4).permute(0, 1, 3, 2, 4, 5)
    return blocks.reshape(batch, 2 * height, 2 * width, channels // 4).permute(0, 3, 1, 2)


def _conv(x: Tensor, conv: nn.Conv2d) -> Tensor:
    return F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding)


class _GraphedPass:
    """One decoder pass of a fixed (images, token grid) captured into a CUDA graph, with static inputs."""

    def __init__(self, run, z_shape: torch.Size, gan: bool, dtype: torch.dtype, device: torch.device, pool):
        self.z = torch.zeros(z_shape, dtype=dtype, device=device)
        self.noise = torch.zeros(z_shape, dtype=dtype, device=device) if gan else None
        self.step = CapturedStep(lambda: run(self.z, self.noise), pool=pool)

    def __call__(self, z: Tensor, noise: Tensor | None) -> Tensor:
        self.z.copy_(z)
        if noise is not None:
            self.noise.copy_(noise)
        return self.step.replay()


class EngineTokenDecoder:
    """``decoder(z, generator)`` like ``TokenDecoder.forward``: ``z [N, z_channels, h, w]`` -> ``[N, out, H, W]``
    (contiguous NCHW), through ``ops`` (an ``OpSet``).

    ``channels_last``: NHWC activations and conv weights (default: on CUDA). ``cuda_graphs``: capture each pass
    (default: on CUDA when every decoder operation is capturable; refused elsewhere). ``pass_bytes``: the peak one
    pass may hold (``memory.DECODE_PASS_BYTES``).
    """

    def __init__(self, decoder: TokenDecoder, ops, *, channels_last: bool | None = None,
                 cuda_graphs: bool | None = None, pass_bytes: int = DECODE_PASS_BYTES):
        weight = decoder.conv_in.weight
        self.decoder, self.ops, self.layout = decoder, ops, decoder.layout
        self.device, self.dtype = weight.device, weight.dtype
        self.channels_last = self.device.type == "cuda" if channels_last is None else bool(channels_last)
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        can_graph = graphs_available(self.device) and ops.capturable(DECODER_OPS)
        if cuda_graphs and not can_graph:
            raise ValueError(f"EngineTokenDecoder: cuda_graphs=True needs a CUDA device and capturable decoder "
                             f"operations; the decoder is on {self.device} with providers "
                             f"{[ops.chosen.get(n) for n in DECODER_OPS]}. Pass cuda_graphs=None or False")
        self.cuda_graphs = can_graph if cuda_graphs is None else bool(cuda_graphs)
        self.bytes_per_pixel = decoder_bytes_per_pixel(self.layout, self.dtype.itemsize)
        self.pass_bytes = pass_bytes
        self._graphs: dict[tuple, _GraphedPass] = {}
        self._pool = None
        if self.channels_last:
            self._conv_weights_channels_last()

    def _conv_weights_channels_last(self) -> None:
        """Re-lay every conv weight of the module out channels-last, in place (one at a time: one weight's copy at
        most exists at once; the old layout is freed)."""
        with torch.no_grad():
            for module in self.decoder.modules():
                if isinstance(module, nn.Conv2d):
                    w = module.weight
                    if not w.is_contiguous(memory_format=torch.channels_last):
                        w.data = w.data.contiguous(memory_format=torch.channels_last)

    def chunk(self, height: int, width: int) -> int:
        """Images per pass at ``height × width`` output (``memory.images_per_pass``)."""
        return images_per_pass(self.bytes_per_pixel, height, width, self.pass_bytes)

    # ------------------------------------------------------------------ one pass
    def _res_block(self, block, x: Tensor) -> Tensor:
        ops = self.ops
        h = _conv(ops.group_norm_silu(x, block.norm1.weight, block.norm1.bias, NORM_GROUPS, NORM_EPS), block.conv1)
        h = _conv(ops.group_norm_silu(h, block.norm2.weight, block.norm2.bias, NORM_GROUPS, NORM_EPS, out=h),
                  block.conv2)
        h += x if block.nin_shortcut is None else _conv(x, block.nin_shortcut)
        return h

    def _upsample(self, upsampler, x: Tensor) -> Tensor:
        x = _conv(x, upsampler.conv1)
        if self.channels_last:
            return depth_to_space_nhwc(x.contiguous(memory_format=torch.channels_last))
        return depth_to_space(x)

    def _run(self, z: Tensor, noise: Tensor | None) -> Tensor:
        """One pass over ``z [n, z_channels, h, w]`` (and its noise map for a GAN decoder) -> ``[n, out, H, W]``."""
        d, ops = self.decoder, self.ops
        token_std, token_mean = token_statistics(z)
        x = z if noise is None else torch.cat([z, noise], dim=1)
        x = _conv(x.contiguous(memory_format=self.memory_format), d.conv_in)
        for block in d.mid_block:
            x = self._res_block(block, x)
        for level in reversed(range(len(d.up))):
            styled = d.adaptive[level]
            scale = F.linear(token_std, styled.gamma.weight, styled.gamma.bias)
            shift = F.linear(token_mean, styled.beta.weight, styled.beta.bias)
            x = ops.token_styled_group_norm(x, scale, shift, NORM_GROUPS, NORM_EPS, out=x)
            for block in d.up[level].block:
                x = self._res_block(block, x)
            if d.up[level].upsample is not None:
                x = self._upsample(d.up[level].upsample, x)
        x = ops.group_norm_silu(x, d.norm_out.weight, d.norm_out.bias, NORM_GROUPS, NORM_EPS, out=x)
        return _conv(x, d.conv_out)

    def _pass(self, z: Tensor, noise: Tensor | None) -> Tensor:
        if not self.cuda_graphs:
            return self._run(z, noise)
        key = tuple(z.shape)
        graphed = self._graphs.get(key)
        if graphed is None:
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graphed = self._graphs[key] = _GraphedPass(self._run, z.shape, noise is not None, self.dtype,
                                                       self.device, self._pool)
        return graphed(z, noise)

    # ------------------------------------------------------------------ a pass over N images
    @torch.no_grad()
    def __call__(self, z: Tensor, generator: torch.Generator | None = None, *, chunk: int | None = None,
                 out: Tensor | None = None) -> Tensor:
        """``z [N, z_channels, h, w]`` -> ``[N, out_channels, h·ds, w·ds]`` in passes of ``chunk`` images (default
        ``self.chunk``), into ``out`` when given (contiguous, the decoder's dtype and device); a GAN decoder needs
        ``generator`` (one noise draw for all N, as the reference)."""
        d = self.decoder
        d._check_tokens(z)
        noise = d._noise_like(z, generator) if self.layout.gan_decoder else None
        n, ds = z.shape[0], self.layout.downsample
        height, width = z.shape[2] * ds, z.shape[3] * ds
        if chunk is None:
            chunk = self.chunk(height, width)
        elif not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"EngineTokenDecoder: chunk={chunk!r}; pass a positive number of images per pass")
        shape = (n, self.layout.out_channels, height, width)
        if out is None:
            if n <= chunk and not self.cuda_graphs:
                return self._run(z, noise).contiguous()
            out = torch.empty(shape, dtype=self.dtype, device=self.device)
        elif (tuple(out.shape) != shape or out.dtype != self.dtype or out.device != self.device
              or not out.is_contiguous()):
            raise ValueError(f"EngineTokenDecoder: out is {list(out.shape)} {out.dtype} on {out.device}, expected a "
                             f"contiguous {list(shape)} {self.dtype} on {self.device}")
        for i in range(0, n, chunk):
            out[i:i + chunk].copy_(self._pass(z[i:i + chunk], None if noise is None else noise[i:i + chunk]))
        return out
