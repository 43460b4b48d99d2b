"""``bench/serving.py --tiny`` end to end in a subprocess (the tiny text-to-image model on the CPU): every field of
its JSON, both modes, and the crowd-equals-alone check. No timing is asserted beyond the run finishing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_serving_bench_runs(tmp_path):
    out = tmp_path / "serving.json"
    proc = subprocess.run([sys.executable, "bench/serving.py", "--tiny", "--concurrency", "2", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert set(data["environment"]) == {"gpu", "torch", "commit"}
    settings = data["settings"]
    assert settings["tiny"] is True and settings["backend"] == "reference" and settings["dtype"] == "float32"
    assert (settings["height"], settings["width"], settings["steps"]) == (512, 512, 1)
    (run,) = data["runs"]
    assert run["concurrency"] == 2 and "2 concurrent: continuous" in proc.stdout
    for mode in ("continuous", "one_by_one"):
        r = run[mode]
        assert r["wall_s"] > 0 and r["images_per_s"] == 2 / r["wall_s"]
        # latencies and the wall time come from separate clock reads: allow a millisecond of skew
        assert len(r["latency_s"]["per_request"]) == 2 and 0 < r["latency_s"]["max"] <= r["wall_s"] + 1e-3
        assert r["rounds"] >= 16 and r["mean_round_s"] == r["wall_s"] / r["rounds"]
    assert run["continuous"]["max_batch_rows"] == 4 and run["one_by_one"]["max_batch_rows"] == 2
    assert run["continuous"]["crowd_equals_alone"] is True
    assert run["throughput_ratio"] == run["continuous"]["images_per_s"] / run["one_by_one"]["images_per_s"]
