"""Where the engine tests run: on a CUDA device when there is one (the real kernels, in float32), else on the CPU
through Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1 there)."""

import torch

ENGINE_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def placement(backend: str) -> dict:
    """``Runtime.from_pretrained`` keywords for the engine tests: the test device, float32, ``backend``."""
    return {"device": ENGINE_DEVICE, "dtype": torch.float32, "backend": backend}
