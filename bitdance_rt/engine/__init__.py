"""The optimized engine (``backend="triton"`` / ``"cuda"``): static KV cache, guidance rows in one batch, Triton or
CUDA kernels for every step, CUDA graphs on a GPU, the head's sampling loop with its per-model work hoisted out, and
continuous batches of image slots (``slot_batch.py``) whose rows sit at different AR steps, joined by a request's
own prefill and stepped together (``engine_base.py``)."""

from __future__ import annotations


def build_engine(family, ops):
    """The engine over ``family``'s model with the operations ``ops`` (``bitdance_rt.ops.OpSet``)."""
    from .c2i_engine import C2IEngine
    from .t2i_engine import T2IEngine

    engines = {"t2i": T2IEngine, "c2i": C2IEngine}  # by family key
    return engines[family.key](family, ops)
