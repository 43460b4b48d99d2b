"""Shared fixtures: the tiny random-weight models of both families, written once per session, and their runtimes.

Text-to-image: P = 64 and P = 16 directories (512x512 images are a 32x32 token grid: 16 or 64 AR steps).
Class-conditional: P = 16 and P = 1 checkpoints with their tokenizer file (256x256 images, 16x16 token grid).
Every runtime is loaded on the CPU in float32, the reference path's exact setting; tests share them and must not
change them. Tests that damage files work on a fresh copy (``t2i_copy``).
"""

from __future__ import annotations

import os

# Triton's interpreter runs tl.dot through NumPy; OpenBLAS's worker threads then keep spinning and starve torch's
# own threads on a 2-core machine (seen: the reference tests ran 15x slower after any kernel test). One BLAS thread
# for NumPy; torch keeps its threads. Must be set before NumPy is first imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402

# Without CUDA, Triton kernels run through Triton's interpreter. The variable must be set before any module defining
# a @triton.jit kernel is imported (kernel tests, the engine), hence here, before collection.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import shutil
from pathlib import Path

import pytest

from bitdance_rt.runtime import Runtime
from bitdance_rt.tiny_models import write_tiny_c2i, write_tiny_t2i


@pytest.fixture
def gpu_tile_shapes(monkeypatch):
    """The tile shapes a GPU gets, also under Triton's interpreter (where the engine launches fewer, taller tiles:
    ``kernels/_tiles.py``), so that the kernels' tests cover launches of many programs and partial tiles on the CPU.
    Used by every test of ``tests/kernels/`` and ``tests/quantization/`` (their conftest files)."""
    import bitdance_rt.kernels._tiles as tiles

    monkeypatch.setattr(tiles, "interpreter_tiles", lambda: False)


@pytest.fixture(scope="module")
def single_thread():
    """For modules of many tiny tensors: a second intra-op thread only adds barrier waits (seconds on a loaded
    machine). Restores the thread count afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny_models")


@pytest.fixture(scope="session")
def t2i64_dir(tiny_root: Path) -> Path:
    return write_tiny_t2i(tiny_root / "t2i_64x", parallel_num=64, seed=0)


@pytest.fixture(scope="session")
def t2i16_dir(tiny_root: Path) -> Path:
    return write_tiny_t2i(tiny_root / "t2i_16x", parallel_num=16, seed=1)


@pytest.fixture(scope="session")
def c2i16_files(tiny_root: Path) -> tuple[Path, Path]:
    """(checkpoint, tokenizer file) of a P = 16 class-conditional model."""
    return write_tiny_c2i(tiny_root / "c2i_16x", parallel_num=16, seed=0)


@pytest.fixture(scope="session")
def c2i1_files(tiny_root: Path) -> tuple[Path, Path]:
    return write_tiny_c2i(tiny_root / "c2i_1x", parallel_num=1, seed=2)


@pytest.fixture(scope="session")
def rt_t2i64(t2i64_dir: Path) -> Runtime:
    return Runtime.from_pretrained(t2i64_dir, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def rt_t2i16(t2i16_dir: Path) -> Runtime:
    return Runtime.from_pretrained(t2i16_dir, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def rt_c2i16(c2i16_files: tuple[Path, Path]) -> Runtime:
    model, tokenizer = c2i16_files
    return Runtime.from_pretrained(model, device="cpu", dtype=torch.float32, tokenizer_path=tokenizer)


@pytest.fixture(scope="session")
def rt_c2i1(c2i1_files: tuple[Path, Path]) -> Runtime:
    model, tokenizer = c2i1_files
    return Runtime.from_pretrained(model, device="cpu", dtype=torch.float32, tokenizer_path=tokenizer)


@pytest.fixture
def t2i_copy(t2i64_dir: Path, tmp_path: Path) -> Path:
    """A fresh, writable copy of the P = 64 text-to-image directory."""
    return Path(shutil.copytree(t2i64_dir, tmp_path / "t2i_copy"))


@pytest.fixture
def c2i_copy(c2i16_files: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    """A fresh, writable copy of the P = 16 class-conditional pair."""
    return tuple(Path(shutil.copy(f, tmp_path / f.name)) for f in c2i16_files)
