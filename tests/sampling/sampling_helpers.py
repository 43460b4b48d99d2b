"""Shared pieces of the sampling tests: tiny prompt files in the benchmarks' real formats (our own prompts), the
environment of subprocess runs, and reading a run's outputs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]

# GenEval's evaluation_metadata.jsonl: one JSON object a line, the evaluator's fields and the prompt
GENEVAL_LINES = [
    {"tag": "single_object", "include": [{"class": "kite", "count": 1}], "prompt": "a photo of a kite"},
    {"tag": "color_attr", "include": [{"class": "boat", "count": 1, "color": "yellow"},
                                      {"class": "clock", "count": 1, "color": "blue"}],
     "prompt": "a photo of a yellow boat and a blue clock"},
]


def write_geneval(path: Path, lines=GENEVAL_LINES) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def write_dpg_json(path: Path, table: dict[str, str]) -> Path:
    """DPG-Bench's prompts as the BitDance release ships them: one JSON object {item_id: prompt}, indented."""
    path.write_text(json.dumps(table, indent=4) + "\n", encoding="utf-8")
    return path


def subprocess_env(**extra: str) -> dict[str, str]:
    """Our checkout first on the path, one thread per process (the runs in a test must compute alike)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    env.pop("TRITON_INTERPRET", None)
    env.update(extra)
    return env


def run_cli(args: list[str], *, ranks: int = 1, timeout: float = 240, **extra_env: str
            ) -> subprocess.CompletedProcess:
    """``python -m bitdance_rt ARGS`` in a subprocess, or under ``torchrun --nproc-per-node ranks`` (gloo)."""
    if ranks == 1:
        cmd = [sys.executable, "-m", "bitdance_rt", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
               "-m", "bitdance_rt", *args]
    return subprocess.run(cmd, cwd=ROOT, env=subprocess_env(**extra_env), capture_output=True, text=True,
                          timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks_without_launcher(args: list[str], ranks: int, timeout: float = 240, **extra_env: str
                               ) -> list[subprocess.CompletedProcess]:
    """``python -m bitdance_rt ARGS`` as ``ranks`` processes joined through the environment (what torchrun sets:
    RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) but with no launcher to tear the job down: each
    process must end on its own. ``subprocess.TimeoutExpired`` is a hang."""
    port = str(free_port())
    procs = []
    for rank in range(ranks):
        env = subprocess_env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(ranks), MASTER_ADDR="127.0.0.1",
                             MASTER_PORT=port, **extra_env)
        procs.append(subprocess.Popen([sys.executable, "-m", "bitdance_rt", *args], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    done = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return done


def npz_samples(folder: Path) -> np.ndarray:
    with np.load(folder / "samples.npz") as data:
        assert data.files == ["arr_0"]
        return data["arr_0"]


def png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "RGB"
        return np.asarray(im)
