"""The optimized engine (``backend="triton"`` / ``"cuda"``; the reference backend's serving uses it with the PyTorch
operations): one ``Engine`` for both families (``engine.py``: the backbone's one layer loop in ``backbone.py``, the
head's fused sampling loop in ``head_loop.py``, AR steps eager or in CUDA graphs in ``ar_step.py`` /
``cuda_graphs.py``), continuous batches of image slots (``slot_batch.py``, ``static_cache.py``), and the model runner
(``runner.py``), the seam the scheduler drives, with its memory estimates (``memory.py``)."""

from __future__ import annotations


def build_engine(family, ops):
    """The engine over ``family``'s model with the operations ``ops`` (``bitdance_rt.ops.OpSet``)."""
    from .engine import Engine

    return Engine(family, ops)
