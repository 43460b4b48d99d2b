"""Kernel tests run Triton's interpreter on a machine without CUDA. The variable must be set before any module
defining a ``@triton.jit`` kernel is imported, which is why it is set here, at collection of this folder."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
