"""``sample`` on the tiny text-to-image model (P = 64, 512x512, unguided, 1 sampling step) into the evaluators'
layouts, from small files of the real formats: GenEval's metadata JSONL -> ``{p:05d}/metadata.jsonl`` +
``samples/{k:04d}.png``; DPG-Bench's ``{item_id: prompt}`` JSON -> ``{item_id}.png`` grids. Image i uses seed
``seed + i`` in every layout, so the same prompt at the same index gives the same image in both. Bad input: a prompt
too long for the model (named by its line), prompts missing for a text-to-image model. (The plain layout, and DPG's
2x2 grids, are checked without the model in ``test_sampling_layouts.py``.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bitdance_rt.errors import InvalidRequestError
from bitdance_rt.runtime import Runtime
from bitdance_rt.sampling import SampleSettings, sample
from sampling_helpers import GENEVAL_LINES, png, write_dpg_json, write_geneval

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def rt_t2i(t2i64_dir, single_thread) -> Runtime:
    """The batch these runs fill: 2 unguided images, one row each (every step computes the whole batch)."""
    return Runtime.from_pretrained(t2i64_dir, device="cpu", dtype=torch.float32, max_batch=2)


def settings(t2i64_dir: Path, out: Path, prompts: Path, **fields) -> SampleSettings:
    values = dict(out=out, model=t2i64_dir, prompts=prompts, height=512, width=512, num_sampling_steps=1,
                  guidance_scale=1.0, batch_size=2, seed=5, progress=False)
    values.update(fields)
    return SampleSettings(**values)


@pytest.fixture(scope="module")
def geneval_run(t2i64_dir, rt_t2i, tmp_path_factory):
    root = tmp_path_factory.mktemp("geneval")
    prompts = write_geneval(root / "evaluation_metadata.jsonl")
    summary = sample(settings(t2i64_dir, root / "out", prompts, images_per_prompt=1), runtime=rt_t2i)
    return root / "out", summary


def test_geneval_layout(geneval_run):
    out, summary = geneval_run
    assert sorted(p.name for p in out.iterdir()) == ["00000", "00001", "run.json"]
    for p, line in enumerate(GENEVAL_LINES):
        folder = out / f"{p:05d}"
        # the evaluator reads the folder's metadata with json.load: the prompt's line, as it was
        assert json.loads((folder / "metadata.jsonl").read_text()) == line
        assert sorted(q.name for q in (folder / "samples").iterdir()) == ["0000.png"]
        assert png(folder / "samples" / "0000.png").shape == (512, 512, 3)
    assert not np.array_equal(png(out / "00000/samples/0000.png"), png(out / "00001/samples/0000.png"))
    assert (summary.new_images, summary.num_images) == (2, 2)


def test_dpg_layout(geneval_run, t2i64_dir, rt_t2i, tmp_path: Path):
    prompts = write_dpg_json(tmp_path / "prompts.json", {"partiprompts7": GENEVAL_LINES[0]["prompt"]})
    sample(settings(t2i64_dir, tmp_path / "out", prompts, images_per_prompt=2), runtime=rt_t2i)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["partiprompts7.png", "run.json"]  # parts/ removed
    grid = png(out / "partiprompts7.png")
    assert grid.shape == (512, 1024, 3)  # 2 images side by side: compute_dpg_bench.py --pic-num 2
    # image 0: the same prompt and seed as GenEval's image 0, so the same pixels; image 1 has seed + 1
    assert np.array_equal(grid[:, :512], png(geneval_run[0] / "00000/samples/0000.png"))
    assert not np.array_equal(grid[:, :512], grid[:, 512:])


def test_prompt_errors(t2i64_dir, rt_t2i, tmp_path: Path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a kite\n\n" + "a very long prompt " * 2000 + "\n", encoding="utf-8")
    with pytest.raises(InvalidRequestError) as e:
        sample(settings(t2i64_dir, tmp_path / "long", prompts), runtime=rt_t2i)
    assert f"image 1 (image 0 of prompt '1', {prompts}, line 3): the prompt is" in str(e.value)
    assert "shorten the prompt" in str(e.value) and e.value.param == "prompt"

    with pytest.raises(InvalidRequestError, match="takes prompts: pass --prompts FILE"):
        sample(SampleSettings(out=tmp_path / "none", model=t2i64_dir, num_samples=4, progress=False),
               runtime=rt_t2i)
