"""The optimized engine (``backend="triton"`` / ``"cuda"``): static KV cache, guidance rows in one batch, Triton or
CUDA kernels for every step, CUDA graphs on a GPU, the head's sampling loop with its per-model work hoisted out, and
continuous batches of image slots (``slot_batch.py``) whose rows sit at different AR steps, joined by a request's
own prefill and stepped together (``engine_base.py``)."""
