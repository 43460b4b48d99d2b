"""Hand-written Triton kernels of bitdance-rt, importable as ``bitdance_rt.kernels``.

Each kernel will sit here beside the PyTorch reference function it must equal (``bitdance_rt.reference``).
None is implemented yet: the runtime's only backend is ``"reference"``.
"""
