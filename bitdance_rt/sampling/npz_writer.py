"""``samples.npz`` written image by image: the archive ``numpy.savez`` would write (one uncompressed member
``arr_0.npy``, uint8 ``[N, H, W, 3]``, the array the ADM evaluation suite reads), streamed from the per-image PNGs in
index order, so 50,000 ImageNet samples never sit in memory at once. Written under a temporary name and renamed."""

from __future__ import annotations

import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from .atomic_files import temp_name

READ_CHUNK = 64  # images decoded ahead of the writer


def write_samples_npz(final: Path, count: int, image_at: Callable[[int], np.ndarray], tmp_dir: Path,
                      threads: int = 4) -> tuple[int, ...]:
    """Write ``final`` holding ``arr_0`` = ``stack([image_at(i) for i in range(count)])``; returns its shape.
    Every image must have the first one's shape (``ValueError`` naming the index otherwise)."""
    first = image_at(0)
    if first.dtype != np.uint8 or first.ndim != 3 or first.shape[2] != 3:
        raise ValueError(f"image 0 is {first.dtype} {first.shape}; expected uint8 [H, W, 3].")
    shape = (count, *first.shape)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": shape}
    tmp = temp_name(tmp_dir, final)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf, \
                zf.open("arr_0.npy", "w", force_zip64=True) as member, \
                ThreadPoolExecutor(max_workers=threads) as pool:
            np.lib.format.write_array_header_1_0(member, header)
            member.write(first.tobytes())
            for start in range(1, count, READ_CHUNK):
                indices = range(start, min(start + READ_CHUNK, count))
                for i, image in zip(indices, pool.map(image_at, indices)):
                    if image.shape != first.shape or image.dtype != np.uint8:
                        raise ValueError(f"image {i} is {image.dtype} {image.shape}; image 0 is uint8 "
                                         f"{first.shape}: every sample must have one size.")
                    member.write(np.ascontiguousarray(image).tobytes())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return shape
