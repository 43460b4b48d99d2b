"""Microbenchmarks need a CUDA GPU; on a machine without one every benchmark is skipped (not failed).

Run: ``python -m pytest bench -q --benchmark-columns=mean,median,rounds``. Each benchmark stores its floor and
ratio in ``benchmark.extra_info``; ``--benchmark-json bench/results/<gpu>-<commit>.json`` keeps the table.
"""

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="microbenchmarks time CUDA kernels; no CUDA device on this machine")
    for item in items:
        item.add_marker(skip)
