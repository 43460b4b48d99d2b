"""Files that appear whole or not at all: each is written under a temporary name in the run's temporary folder (on
the same filesystem as the output) and renamed into place, so a run killed at any moment leaves no half-written
image, grid, index or archive behind, and a rerun can trust every file it finds."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import numpy as np

PNG_COMPRESS_LEVEL = 1  # lossless either way; level 1 encodes several times faster than the default 6


def temp_name(tmp_dir: Path, final: Path) -> Path:
    """A temporary path for ``final`` unique to this process and thread."""
    return tmp_dir / f"{final.name}.{os.getpid()}.{threading.get_ident()}.tmp"


def write_bytes(final: Path, data: bytes, tmp_dir: Path) -> None:
    tmp = temp_name(tmp_dir, final)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(final: Path, text: str, tmp_dir: Path) -> None:
    write_bytes(final, text.encode("utf-8"), tmp_dir)


def png_bytes(pixels: np.ndarray) -> bytes:
    """uint8 ``[H, W, 3]`` as PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def write_png(final: Path, pixels: np.ndarray, tmp_dir: Path) -> None:
    write_bytes(final, png_bytes(pixels), tmp_dir)


def read_png(path: Path) -> np.ndarray:
    """A PNG written by this package, as uint8 ``[H, W, 3]``."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)
