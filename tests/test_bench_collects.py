"""Every benchmark module imports and collects on a machine without a GPU (the benchmarks themselves skip there): a
renamed kernel or launcher must not leave ``bench/`` broken until the next lent GPU finds it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_bench_collects_without_errors():
    run = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "."],
                         cwd=BENCH, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "error" not in run.stdout.splitlines()[-1].lower(), run.stdout[-3000:]
