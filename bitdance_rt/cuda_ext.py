"""The CUDA extension (``csrc/``): found prebuilt, or compiled on first use, and its operators loaded.

Every ``csrc/*.cu`` registers its operators as ``torch.ops.bitdance_rt.<name>``; ``csrc/module.cpp`` makes the
whole a Python module ``bitdance_rt_cuda``. ``load_extension()`` returns ``True`` once the operators are there:
1. a module built ahead of time by ``setup.py`` (``BITDANCE_RT_BUILD_CUDA=1 pip install .``) is imported;
2. otherwise, on a machine with a CUDA device and the CUDA toolkit, the sources are compiled with
   ``torch.utils.cpp_extension.load`` into ``$BITDANCE_RT_CUDA_CACHE`` (default: torch's extension cache), once,
   and reused by later processes;
3. otherwise (no CUDA device, no toolkit, a failed build) it returns ``False`` and ``status()`` says why; the
   dispatcher then takes the Triton or PyTorch version of each operation.
``BITDANCE_RT_DISABLE_CUDA_EXT=1`` skips the extension altogether.
"""

from __future__ import annotations

import importlib
import os
import threading
from pathlib import Path

import torch

EXTENSION_NAME = "bitdance_rt_cuda"
NAMESPACE = "bitdance_rt"
CSRC = Path(__file__).resolve().parent.parent / "csrc"
CUDA_FLAGS = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-diag-suppress", "3306", "-lineinfo"]

_lock = threading.Lock()
_state: dict[str, object] = {"loaded": None, "why": "not tried yet"}


def sources() -> list[Path]:
    """The extension's source files: every ``csrc/*.cu`` plus ``csrc/module.cpp``."""
    return sorted(CSRC.glob("*.cu")) + [CSRC / "module.cpp"]


def _prebuilt() -> bool:
    try:
        importlib.import_module(f"bitdance_rt.{EXTENSION_NAME}")
    except ImportError:
        return False
    return True


def _compile() -> None:
    from torch.utils.cpp_extension import load

    build_dir = os.environ.get("BITDANCE_RT_CUDA_CACHE")
    if build_dir:
        Path(build_dir).mkdir(parents=True, exist_ok=True)
    load(name=EXTENSION_NAME, sources=[str(s) for s in sources()], extra_cuda_cflags=CUDA_FLAGS,
         extra_include_paths=[str(CSRC)], build_directory=build_dir, verbose=False)


def load_extension() -> bool:
    """Load the operators once per process; ``True`` when ``torch.ops.bitdance_rt`` has them."""
    with _lock:
        if _state["loaded"] is not None:
            return bool(_state["loaded"])
        if os.environ.get("BITDANCE_RT_DISABLE_CUDA_EXT") == "1":
            _state.update(loaded=False, why="disabled by BITDANCE_RT_DISABLE_CUDA_EXT=1")
        elif _prebuilt():
            _state.update(loaded=True, why="prebuilt by setup.py")
        elif not torch.cuda.is_available():
            _state.update(loaded=False, why="no CUDA device")
        elif not CSRC.is_dir():
            _state.update(loaded=False, why=f"no sources at {CSRC} and no prebuilt module")
        else:
            try:
                _compile()
                _state.update(loaded=True, why="compiled on first use (torch.utils.cpp_extension)")
            except Exception as err:  # a broken toolchain must not break the runtime: fall back, and say why
                _state.update(loaded=False, why=f"build failed: {type(err).__name__}: {str(err)[-400:]}")
        return bool(_state["loaded"])


def has_op(name: str) -> bool:
    """Whether the extension is loaded and registers ``torch.ops.bitdance_rt.<name>``."""
    return load_extension() and hasattr(getattr(torch.ops, NAMESPACE), name)


def status() -> str:
    """One line: whether the extension is in use and why (for ``describe()`` and the CLI's ``info``)."""
    loaded = _state["loaded"]
    if loaded is None:
        return "not loaded yet"
    return ("loaded: " if loaded else "not used: ") + str(_state["why"])
