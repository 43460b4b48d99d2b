"""``bitdance-rt info MODEL``: family, sizes, parameter counts and stored dtypes (reads no weights), and which
kernel provider each engine operation would get on a device and backend."""

from __future__ import annotations

import argparse
import json

from .model_options import add_quantization_argument

NAME = "info"
HELP = "family, sizes, parameter counts and dtypes of a checkpoint (reads no weights)"


def add_arguments(i: argparse.ArgumentParser) -> None:
    i.add_argument("model")
    i.add_argument("--tokenizer")
    i.add_argument("--trust-pickle", action="store_true")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.add_argument("--device", help="device whose kernel choice to report (default: cuda if present, else cpu)")
    i.add_argument("--backend", default="auto", help="backend whose kernel choice to report (default: auto)")
    add_quantization_argument(i)


def run(a: argparse.Namespace) -> int:
    from ..loading.inspect import inspect_checkpoint

    info = inspect_checkpoint(a.model, a.tokenizer, a.trust_pickle)
    info["kernels"] = kernel_choice(a.device, a.backend)
    info["kernels"]["quantization"] = quantization_choice(a.device, getattr(a, "quantization", None))
    if a.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        print(f"{key:>16}: {value}")
    return 0


def kernel_choice(device: str | None, backend: str) -> dict[str, str]:
    """Which backend ``device`` and ``backend`` resolve to and, for the engine, which provider (CUDA extension,
    Triton, PyTorch) each operation gets and why a provider was skipped — without loading any weights."""
    from ..platform import resolve_backend, resolve_device
    from ..ops import OpSet

    dev = resolve_device(device)
    chosen = resolve_backend(backend, dev)
    if chosen == "reference":
        return {"device": str(dev), "backend": "reference (the release's loops in PyTorch)"}
    ops = OpSet(dev, chosen)
    by_provider: dict[str, list[str]] = {}
    for name, provider in ops.summary().items():
        by_provider.setdefault(provider, []).append(name)
    out = {"device": str(dev), "backend": chosen}
    out.update({provider: " ".join(names) for provider, names in by_provider.items()})
    out.update({f"{provider} skipped": why for provider, why in ops.skipped.items()})
    return out


def quantization_choice(device: str | None, quantization: str | None) -> str:
    """``--quantization`` checked for ``device`` (fp8 needs compute capability >= 8.9), in words."""
    from ..platform import resolve_device
    from ..quantization.formats import check_quantization

    q = check_quantization(quantization, resolve_device(device))
    return {None: "none (the checkpoint's precision)", "fp8": "fp8 (e4m3 weights with per-channel scales, "
            "activations per token)", "int8": "int8 (weight-only, per-channel scales)"}[q]
