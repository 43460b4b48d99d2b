"""The options every model-loading command shares (``--tokenizer``, ``--device``, ``--dtype``, ``--backend``,
``--quantization``, ``--trust-pickle``) and the one place that turns them into a ``Runtime``."""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
from pathlib import Path

def add_model_arguments(p: argparse.ArgumentParser, model_required: bool = True) -> None:
    if model_required:
        p.add_argument("model", help="text-to-image model directory or class-conditional checkpoint (.pt)")
    else:
        p.add_argument("model", nargs="?", help="text-to-image model directory or class-conditional checkpoint (.pt)")
    p.add_argument("--tokenizer", help="class-conditional tokenizer file (ae_d16c32.pt)")
    add_device_arguments(p)
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow class-conditional files that need full pickle loading (runs code from the file)")


def add_device_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--backend", default="auto",
                   help="auto (default: the engine on CUDA, the reference elsewhere), reference, triton or cuda")
    add_quantization_argument(p)


def add_quantization_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quantization", choices=["fp8", "int8"],
                   help="8-bit weights for the backbone's and head's linears, quantized at load: fp8 (e4m3 weights "
                        "and activations, CUDA compute capability >= 8.9) or int8 (weight-only, any GPU); default: "
                        "the checkpoint's precision")


def load_runtime(a: argparse.Namespace, model=None, **options):
    """``Runtime.from_pretrained`` with the command's model options (``model`` overrides ``a.model``)."""
    from ..runtime import Runtime

    return Runtime.from_pretrained(a.model if model is None else model, device=a.device, dtype=a.dtype,
                                   backend=a.backend, tokenizer_path=getattr(a, "tokenizer", None),
                                   trust_pickle=getattr(a, "trust_pickle", False),
                                   quantization=getattr(a, "quantization", None), **options)


@contextlib.contextmanager
def serving_runtime(a: argparse.Namespace, **limits):
    """The runtime a serving command (``serve``, ``gradio``) runs: the model of ``a``, or with ``--tiny`` a tiny
    random-weight text-to-image model written to a scratch folder (removed on exit) and run on the CPU unless
    ``--device`` says otherwise. Yields ``(runtime, what was loaded)``."""
    if not a.tiny:
        yield load_runtime(a, **limits), a.model
        return
    from ..runtime import Runtime
    from ..tiny_models import write_tiny_t2i

    scratch = tempfile.mkdtemp(prefix="bitdance-tiny-")
    try:
        model = write_tiny_t2i(Path(scratch) / "tiny-t2i", parallel_num=64, seed=0)
        yield Runtime.from_pretrained(model, device=a.device or "cpu", dtype=a.dtype, backend=a.backend,
                                      quantization=getattr(a, "quantization", None), **limits), model
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
