"""The binary tokenizer of the digits model: an encoder of our own, sign quantization with a straight-through
estimator, and the runtime's own token decoder (``bitdance_rt.reference.token_decoder.TokenDecoder``), trained
together on pixel reconstruction.

Encoder (keys ``encoder.*`` in the tokenizer file): ``conv_in`` 3x3 (3 -> 32) at full size, then one stride-2 3x3
conv per halving (``down.k``; widths 64, 64, 128, ...) with SiLU between, then ``conv_out`` 1x1 to C channels.
Quantizer: ``q = +1 where h >= 0 else -1`` forward, the identity backward (straight-through), plus a commitment
term ``mean((h - q)^2)`` that keeps ``h`` near ±1 (lookup-free quantization's; the release's GFQ adds entropy terms
that a 1,797-image set does not need). Training also flips a random few tokens before decoding (up to
``flip_max`` of the bits, uniform per image) so that the decoder tolerates the AR model's mistakes, and shifts the
images by up to ``shift`` pixels.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from bitdance_rt.reference.token_decoder import DecoderLayout, TokenDecoder

ENCODER_WIDTHS = (32, 64, 64, 128, 128)


class DigitEncoder(nn.Module):
    def __init__(self, z_channels: int, downsample: int):
        super().__init__()
        halvings = int(round(math.log2(downsample)))
        if 2 ** halvings != downsample or halvings + 1 > len(ENCODER_WIDTHS):
            raise ValueError(f"downsample {downsample}: expected a power of two up to {2 ** (len(ENCODER_WIDTHS) - 1)}")
        widths = ENCODER_WIDTHS[:halvings + 1]
        self.conv_in = nn.Conv2d(3, widths[0], 3, padding=1)
        self.down = nn.ModuleList(nn.Conv2d(widths[k], widths[k + 1], 3, stride=2, padding=1)
                                  for k in range(halvings))
        self.conv_out = nn.Conv2d(widths[-1], z_channels, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` in [-1, 1] -> pre-quantization ``[N, C, H/ds, W/ds]``."""
        x = F.silu(self.conv_in(images))
        for conv in self.down:
            x = F.silu(conv(x))
        return self.conv_out(x)


def quantize(h: torch.Tensor) -> torch.Tensor:
    """±1 forward (0 maps to +1, so no 0 token is ever stored), identity gradient."""
    q = torch.where(h >= 0, 1.0, -1.0).to(h.dtype)
    return h + (q - h).detach()


def flip_bits(q: torch.Tensor, flip_max: float, generator: torch.Generator) -> torch.Tensor:
    """Flip each bit of image i with probability ``flip_max · u_i``, ``u_i`` uniform in [0, 1)."""
    if flip_max <= 0:
        return q
    rate = flip_max * torch.rand(q.shape[0], 1, 1, 1, generator=generator)
    flips = torch.rand(q.shape, generator=generator) < rate
    return torch.where(flips, -q, q)


def shift_images(images: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``shift`` pixels in each direction, filling with the background (-1)."""
    if shift <= 0:
        return images
    n, _, h, w = images.shape
    padded = F.pad(images, (shift, shift, shift, shift), value=-1.0)
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=generator).tolist()
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def train_tokenizer(images: torch.Tensor, layout: DecoderLayout, *, steps: int, batch: int, lr: float,
                    commitment: float, flip_max: float, shift: int, generator: torch.Generator,
                    log=print) -> tuple[DigitEncoder, TokenDecoder, dict]:
    """Train encoder and decoder on ``images [N, 3, H, W]``; returns them (eval mode) and the final figures."""
    encoder = DigitEncoder(layout.z_channels, layout.downsample)
    decoder = TokenDecoder(layout)
    params = list(encoder.parameters()) + list(decoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    start = time.perf_counter()
    running = 0.0
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        idx = torch.randint(0, images.shape[0], (batch,), generator=generator)
        x = shift_images(images[idx], shift, generator)
        h = encoder(x)
        q = flip_bits(quantize(h), flip_max, generator)
        recon = decoder(q)
        loss = F.mse_loss(recon, x) + F.l1_loss(recon, x) + commitment * F.mse_loss(h, q.detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        running += loss.item()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            log(f"tokenizer step {step + 1}/{steps}: loss {running / ((step % 100) + 1):.4f} "
                f"({time.perf_counter() - start:.0f} s)")
            running = 0.0
    encoder.eval()
    decoder.eval()
    with torch.no_grad():
        recon = decode_all(decoder, encode_all(encoder, images))
    figures = {"reconstruction_mse": F.mse_loss(recon, images).item(),
               "reconstruction_l1": F.l1_loss(recon, images).item()}
    return encoder, decoder, figures


@torch.no_grad()
def encode_all(encoder: DigitEncoder, images: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """Binary token maps ``[N, C, h, w]`` of ±1."""
    return torch.cat([torch.where(encoder(images[i:i + chunk]) >= 0, 1.0, -1.0)
                      for i in range(0, images.shape[0], chunk)])


@torch.no_grad()
def decode_all(decoder: TokenDecoder, tokens: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    return torch.cat([decoder(tokens[i:i + chunk]) for i in range(0, tokens.shape[0], chunk)])
