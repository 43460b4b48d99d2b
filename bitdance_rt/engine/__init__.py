"""The optimized engine (``backend="triton"``): static KV cache, guidance rows in one batch, Triton kernels for
every step, CUDA graphs on a GPU, and the head's sampling loop with its per-model work hoisted out."""
