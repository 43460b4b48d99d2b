"""``bitdance-rt demo``: the digits grid by default, the tiny random-weight model with ``--tiny-random``."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from bitdance_rt.cli import main

TILE = 16 * 4  # 16-pixel digits enlarged 4 times
GAP = 4


def test_demo_writes_a_grid_of_digits(tmp_path: Path, capsys):
    out_dir = tmp_path / "demo"
    assert main(["demo", "--out", str(out_dir), "--samples", "2", "--steps", "4"]) == 0
    stdout = capsys.readouterr().out
    image_path = out_dir / "demo.png"
    assert str(image_path.resolve()) in stdout and "digits 0-9" in stdout
    with Image.open(image_path) as image:
        assert image.size == (2 * (TILE + GAP) + GAP, 10 * (TILE + GAP) + GAP)
        pixels = image.convert("L")
        assert max(pixels.getdata()) > 200  # white ink on a dark background: the digits are drawn
