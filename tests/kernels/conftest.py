"""The kernels' tests run the tile shapes a GPU gets, also under Triton's interpreter (where the engine uses taller
tiles to launch fewer programs: ``kernels/_tiles.py``), so that launches of many programs and partial tiles are
tested on the CPU too."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def gpu_tile_shapes(monkeypatch):
    import bitdance_rt.kernels._tiles as tiles

    monkeypatch.setattr(tiles, "interpreter_tiles", lambda: False)
