"""The output layouts and the ranks' status board without a model: images made of known pixels are saved through a
layout as the runner saves them, then the layout's final files are checked (the plain layout's ``index.jsonl``,
DPG-Bench's 2x2 grids built from the single images, what a folder counts as finished), and two status boards in one
folder play two ranks (a failure named, a silent rank named after the timeout)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bitdance_rt.sampling import PeerFailed, SampleSettings, SamplingError
from bitdance_rt.sampling.job import Job, read_inputs
from bitdance_rt.sampling.layouts import layout_for
from bitdance_rt.sampling.status_board import StatusBoard
from sampling_helpers import png, write_dpg_json


def job_of(tmp_path: Path, prompts: Path, **fields) -> Job:
    """A text-to-image run's job without a model: the layouts read only the inputs, the size and the seed."""
    inputs = read_inputs(SampleSettings(out=tmp_path / "out", model="unused", prompts=prompts, seed=100, **fields))
    return Job(inputs, family=None, labels=None, height=4, width=6, num_sampling_steps=1, guidance_scale=1.0,
               rows_per_image=1)


def pixels(i: int) -> np.ndarray:
    return np.full((4, 6, 3), 10 * (i + 1), dtype=np.uint8)


def save_all(layout, job: Job, indices) -> Path:
    tmp = layout.out / ".tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    layout.prepare(tmp)
    for i in indices:
        layout.save(i, pixels(i), tmp)
    return tmp


def test_plain_layout(tmp_path: Path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\n\na blue car\n", encoding="utf-8")
    job = job_of(tmp_path, prompts, images_per_prompt=2)
    layout = layout_for(job.settings.out, job)
    tmp = save_all(layout, job, [0, 1, 3])
    assert layout.finished() == {0, 1, 3}
    with pytest.raises(SamplingError, match=r"1 image\(s\) are missing .*image 2 \(image 0 of prompt '1', .*line 3\)"):
        layout.finalize(tmp)
    layout.save(2, pixels(2), tmp)
    layout.finalize(tmp)
    out = layout.out
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert [(r["index"], r["file"], r["prompt"], r["line"], r["image"], r["seed"]) for r in index] == [
        (0, "images/000000.png", "a red fox", 1, 0, 100), (1, "images/000001.png", "a red fox", 1, 1, 101),
        (2, "images/000002.png", "a blue car", 3, 0, 102), (3, "images/000003.png", "a blue car", 3, 1, 103)]
    assert all(np.array_equal(png(out / "images" / f"{i:06d}.png"), pixels(i)) for i in range(4))


def test_dpg_layout_builds_2x2_grids(tmp_path: Path):
    prompts = write_dpg_json(tmp_path / "prompts.json", {"3": "a kite", "countbench12": "two cats"})
    job = job_of(tmp_path, prompts)  # 4 images a prompt by default
    assert job.inputs.images_per_prompt == 4 and job.num_images == 8
    layout = layout_for(job.settings.out, job)
    tmp = save_all(layout, job, range(8))
    layout.finalize(tmp)
    out = layout.out
    assert sorted(p.name for p in out.iterdir()) == [".tmp", "3.png", "countbench12.png"]  # parts/ removed
    grid = png(out / "countbench12.png")
    assert grid.shape == (8, 12, 3)
    # crops in compute_dpg_bench.py's order: images 4, 5, 6, 7 of the run (prompt 1)
    crops = [grid[:4, :6], grid[:4, 6:], grid[4:, :6], grid[4:, 6:]]
    assert all(np.array_equal(c, pixels(4 + k)) for k, c in enumerate(crops))
    assert layout.finished() == set(range(8))  # a grid stands for its images once the parts are gone


def test_dpg_too_many_images_per_prompt(tmp_path: Path):
    from bitdance_rt.errors import InvalidRequestError

    prompts = write_dpg_json(tmp_path / "prompts.json", {"1": "a kite"})
    with pytest.raises(InvalidRequestError, match="reads at most 4 images") as e:
        job_of(tmp_path, prompts, images_per_prompt=5)
    assert e.value.param == "images_per_prompt"


def test_status_board_names_a_failed_or_silent_rank(tmp_path: Path):
    rank0 = StatusBoard(tmp_path, "run-a", 0, 2, poll_s=0.01)
    rank1 = StatusBoard(tmp_path, "run-a", 1, 2, poll_s=0.01)
    for board in (rank0, rank1):
        board.publish("ready")
    rank0.publish("done")
    rank0.check_peers(force=True)  # rank 1 is fine
    with pytest.raises(SamplingError, match=r"still missing: rank 1 \(ready, 0 images\)\. A rank that stopped"):
        rank0.wait_for("done", timeout_s=0.05)
    rank1.publish("failed", images=3, error="RuntimeError: out of memory")
    with pytest.raises(PeerFailed, match=r"rank 1 on .* failed: RuntimeError: out of memory\. Rank 0 stopped too") \
            as e:
        rank0.check_peers(force=True)
    assert e.value.rank == 1
    assert StatusBoard(tmp_path, "run-b", 0, 2).read() == {}  # an earlier run's files are not this run's ranks
