"""One interface, several implementations: the engine's operations and the dispatcher that picks, per operation,
the CUDA extension (``csrc/``), the Triton kernel (``kernels/``) or the PyTorch reference.

``OpSet(device, chain)`` resolves every operation once, taking the first provider of ``chain`` that has it and can
run on ``device``; the engine calls ``ops.<name>(...)`` and ``ops.chosen`` says which provider each one got (shown by
``Runtime.describe()`` and the CLI's ``info``). Every provider of an operation takes the same arguments as the
Triton launcher of that name (``kernels/``) and computes the same thing.
"""

from .dispatch import CHAINS, OP_NAMES, OpSet, provider_available

__all__ = ["CHAINS", "OP_NAMES", "OpSet", "provider_available"]
