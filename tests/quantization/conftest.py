"""The kernels' tests run the tile shapes a GPU gets, also under Triton's interpreter (``gpu_tile_shapes`` in
``tests/conftest.py``)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _gpu_tiles(gpu_tile_shapes):
    yield
