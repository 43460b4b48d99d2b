"""``bench/sample_throughput.py --tiny`` in this process (the tiny class-conditional model on the CPU): the JSON's
fields and a rate that is the images over the measured seconds. The GPU path (B-16x, bf16) cannot run here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import sample_throughput  # noqa: E402


def test_tiny_sample_bench(tmp_path: Path, capsys):
    out = tmp_path / "sample.json"
    args = ["--tiny", "--quiet", "--batch-size", "1", "--num-samples", "2", "--out", str(out)]
    assert sample_throughput.main(args) == 0
    data = json.loads(out.read_text())
    assert set(data["environment"]) == {"gpu", "torch", "commit"}
    assert data["settings"]["tiny"] is True and data["settings"]["backend"] == "reference"
    assert data["settings"]["guidance"] == 4.0  # the tiny shape's default
    timed = data["timed"]
    assert timed["num_images"] == 2 and timed["images_per_s"] == 2 / timed["sampling_s"]
    assert timed["wall_s"] >= timed["sampling_s"] > 0 and timed["hours_for_50k"] > 0
    assert data["warmup"]["num_images"] == 1  # one batch
    assert "tiny-c2i-16x: " in capsys.readouterr().out
