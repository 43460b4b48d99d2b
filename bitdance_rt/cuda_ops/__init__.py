"""Python launchers of the CUDA extension's operators (``csrc/``), one module per operation: each checks its
arguments like the Triton launcher of the same operation, allocates missing outputs, and calls
``torch.ops.bitdance_rt.<name>`` (``bitdance_rt.cuda_ext`` builds and loads the extension)."""
