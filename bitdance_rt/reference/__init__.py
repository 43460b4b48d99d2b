"""Plain PyTorch reference modules: the oracle every fast path is tested against."""
