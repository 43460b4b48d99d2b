"""``OpSet``: each engine operation bound to the first provider of a preference chain that can run it.

Providers: ``"cuda"`` (the extension's operators, ``bitdance_rt/cuda_ops``; CUDA devices, when it builds),
``"triton"`` (``kernels/``; CUDA devices, or any device under Triton's interpreter, ``TRITON_INTERPRET=1``),
``"torch"`` (``bitdance_rt/ops/torch_ops.py``, the PyTorch reference functions behind the same signatures; any
device; not graph-capturable, as they read lengths on the host).
"""

from __future__ import annotations

import importlib
from typing import Callable

import torch

from ..errors import UnsupportedDeviceError

PROVIDERS = ("cuda", "triton", "torch")
# preference chains by engine flavour; the first provider that has an operation and can run it wins
CHAINS = {"cuda": ("cuda", "triton", "torch"), "triton": ("triton", "torch"), "torch": ("torch",)}

# operation -> module of each provider that has it (bitdance_rt.<module>), same function name in each
_TRITON = {
    "block_attention_decode": "kernels.block_attention", "block_attention_prefill": "kernels.block_attention",
    "qk_norm_rope_append": "kernels.pre_attention", "rope_append_interleaved": "kernels.pre_attention",
    "rmsnorm_residual": "kernels.rmsnorm_residual", "layernorm_modulate": "kernels.layernorm_modulate",
    "gated_residual": "kernels.gated_residual", "swiglu": "kernels.swiglu",
    "patch_attention": "kernels.patch_attention", "sampler_step": "kernels.sampler_step",
    "time_condition": "kernels.time_condition", "sigmoid_output": "kernels.sigmoid_output",
    "group_norm_silu": "kernels.group_norm_silu", "token_styled_group_norm": "kernels.group_norm_silu",
    "input_projection": "kernels.input_projection", "final_layer": "kernels.final_layer",
    "final_layer_step": "kernels.final_layer",
    "sampler_final": "kernels.sampler_step", "sign_quantize": "kernels.token_packing",
    "pack_signs": "kernels.token_packing", "unpack_signs": "kernels.token_packing",
    "quantized_linear": "quantization.fast_linear",  # int8 / fp8 GEMM kernels (and the fp8 activation quantizer)
    # our GEMMs with fused epilogues, float or 8-bit weights (float: used where ops.gemm_choice says so)
    "float_linear": "ops.triton_linear", "linear_swiglu": "ops.triton_linear",
    "linear_gated_residual": "ops.triton_linear",
}
# operation -> (module, function) of the CUDA provider, and whether the "cuda" chain prefers it over Triton. Only
# operations measured faster than their Triton version inside a CUDA graph (as the engine runs them) are preferred;
# the others can be asked for with ``OpSet(..., overrides={name: "cuda"})``. H100, torch 2.11, triton 3.6,
# ``bench/test_bench_cuda_*.py`` (graphed µs, CUDA vs Triton): sampler step with in-kernel noise 2.7 vs 5.0 (Triton
# step plus its torch.randn) at T2I batch 1, 3.2 vs 7.2 at class-conditional batch 256; keyed noise alone 2.2 vs
# 3.0 (torch.randn; at 256x4096 tokens, far above the released shapes, 98.7 vs 81.9); final step 2.6 vs 2.0; pre-attention decode P=64 5.1 vs 3.6; pack 26.0 vs 25.4; bit_linear
# (128 rows) 9.9 vs 5.8 for unpack + F.linear.
_CUDA = {
    "sampler_step_keyed": ("cuda_ops.sampler_step", "sampler_step_keyed", True),
    "keyed_noise": ("cuda_ops.sampler_step", "keyed_noise", True),
    "sampler_final": ("cuda_ops.sampler_step", "sampler_final", False),
    "qk_norm_rope_append": ("cuda_ops.pre_attention", "qk_norm_rope_append", False),
    "pack_signs": ("cuda_ops.token_packing", "pack_signs", False),
    "unpack_signs": ("cuda_ops.token_packing", "unpack_signs", False),
    "bit_linear": ("cuda_ops.token_packing", "bit_linear", False),
}
# operations the Triton provider builds from a Triton kernel plus PyTorch (bitdance_rt/ops/triton_composites.py)
_TRITON_COMPOSITES = ("sampler_step_keyed",)
OP_NAMES = tuple(sorted(set(_TRITON) | set(_CUDA) | set(_TRITON_COMPOSITES)))


def provider_available(provider: str, device: torch.device) -> tuple[bool, str]:
    """Whether ``provider`` can run on ``device`` at all, and if not, why."""
    if provider == "torch":
        return True, ""
    if provider == "triton":
        from ..platform import triton_interpreter_on

        if device.type == "cuda" or triton_interpreter_on():
            return True, ""
        return False, f"Triton kernels run on CUDA devices, or on {device.type} under TRITON_INTERPRET=1"
    if provider == "cuda":
        if device.type != "cuda":
            return False, f"the CUDA extension runs on CUDA devices, not {device.type}"
        from .. import cuda_ext

        return (True, "") if cuda_ext.load_extension() else (False, cuda_ext.status())
    raise ValueError(f"unknown provider {provider!r}; expected one of {PROVIDERS}")


def _lookup(provider: str, name: str, forced: bool = False) -> Callable | None:
    """The provider's function for ``name``; for "cuda", only a preferred one unless ``forced``."""
    if provider == "torch":
        from . import torch_ops

        return getattr(torch_ops, name, None)
    if provider == "triton":
        if name in _TRITON_COMPOSITES:
            from . import triton_composites

            return getattr(triton_composites, name)
        module = _TRITON.get(name)
        return None if module is None else getattr(importlib.import_module(f"bitdance_rt.{module}"), name)
    entry = _CUDA.get(name)
    if entry is None:
        return None
    from .. import cuda_ext

    module, function, preferred = entry  # each launcher is named as the operator it calls
    if not (preferred or forced) or not cuda_ext.has_op(function):  # slower than Triton, or not built
        return None
    return getattr(importlib.import_module(f"bitdance_rt.{module}"), function)


class OpSet:
    """Every engine operation resolved for one device and chain; ``ops.<name>`` is the chosen function.
    ``float_gemm``: how the engine's float-weight GEMMs choose between our Triton GEMM (with fused epilogues) and
    cuBLAS: ``"measured"`` (the benchmark's table, ``ops/gemm_choice.py``), ``"ours"`` or ``"cublas"``."""

    def __init__(self, device: torch.device | str, chain: str | tuple[str, ...] = "triton",
                 overrides: dict[str, str] | None = None, float_gemm: str = "measured"):
        from .gemm_choice import check_mode

        self.float_gemm = check_mode(float_gemm)  # float weights: ours or cuBLAS (ops/gemm_choice.py)
        device = torch.device(device)
        order = CHAINS[chain] if isinstance(chain, str) else tuple(chain)
        unknown = [p for p in order if p not in PROVIDERS] + [p for p in (overrides or {}).values()
                                                               if p not in PROVIDERS]
        if unknown:
            raise ValueError(f"OpSet: unknown provider(s) {unknown}; expected names from {PROVIDERS}")
        usable = {p: provider_available(p, device) for p in set(order) | set((overrides or {}).values())}
        self.device, self.chain = device, order
        self.skipped = {p: why for p, (ok, why) in usable.items() if not ok}
        self.chosen: dict[str, str] = {}
        self._fns: dict[str, Callable] = {}
        for name in OP_NAMES:
            forced = (overrides or {}).get(name)
            for provider in (forced,) if forced else order:
                if not usable[provider][0]:
                    continue
                fn = _lookup(provider, name, forced=bool(forced))
                if fn is not None:
                    self._fns[name], self.chosen[name] = fn, provider
                    break
            else:
                if forced:
                    raise UnsupportedDeviceError(f"OpSet: {name} was asked of provider {forced!r}, which cannot run "
                                                 f"it here: {usable[forced][1] or 'it has no such operation'}")

    def __getattr__(self, name: str) -> Callable:
        fns = self.__dict__.get("_fns", {})
        if name in fns:
            return fns[name]
        raise AttributeError(f"OpSet has no operation {name!r} for {self.__dict__.get('device')} with chain "
                             f"{self.__dict__.get('chain')}; operations: {', '.join(sorted(fns))}")

    def capturable(self, names: tuple[str, ...]) -> bool:
        """Whether a CUDA graph can hold every operation of ``names`` as chosen here: all of them except the
        PyTorch-provider ones that read device values on the host (``torch_ops.READS_ON_HOST``)."""
        from .torch_ops import READS_ON_HOST

        return not any(self.chosen.get(name) == "torch" and name in READS_ON_HOST for name in names)

    def summary(self) -> dict[str, str]:
        """Provider by operation, for ``describe()``."""
        return dict(sorted(self.chosen.items()))
