"""Image sizes the text-to-image models accept, as ``(height, width)`` in pixels (the release's list)."""

from __future__ import annotations

from .errors import InvalidRequestError

T2I_SIZES_1024 = ((2048, 512), (1920, 512), (1536, 640), (1280, 768), (1152, 896), (1024, 1024),
                  (896, 1152), (768, 1280), (640, 1536), (512, 1920), (512, 2048))
T2I_SIZES_512 = ((1024, 256), (896, 256), (640, 384), (512, 512), (384, 640), (256, 896), (256, 1024))
T2I_SIZES = T2I_SIZES_1024 + T2I_SIZES_512
C2I_SIZE = (256, 256)


def format_sizes(sizes) -> str:
    return ", ".join(f"{h}x{w}" for h, w in sizes)


def check_t2i_size(height: int, width: int) -> None:
    if (height, width) not in T2I_SIZES:
        raise InvalidRequestError(f"height x width = {height}x{width} is not a supported size; choose one of: "
                                  f"{format_sizes(T2I_SIZES)} (height x width, pixels).")


def token_grid(height: int, width: int, downsample: int, parallel: int) -> tuple[int, int]:
    """Token grid ``(h, w)`` for an image size; checks that P's patches tile it."""
    side = int(round(parallel ** 0.5))
    if height % downsample or width % downsample:
        raise InvalidRequestError(f"{height}x{width} is not a multiple of the tokenizer's downsampling {downsample}.")
    h, w = height // downsample, width // downsample
    if h % side or w % side:
        raise InvalidRequestError(f"P = {parallel} tokens per step ({side}x{side} patches) does not divide the "
                                  f"{h}x{w} token grid of a {height}x{width} image; choose another size.")
    return h, w
