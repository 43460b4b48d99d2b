"""``bitdance-rt sample`` on the tiny class-conditional model (P = 16, 8 images, 2 sampling steps, batches of 4):

- ``torchrun --nproc-per-node 2`` (gloo) writes the ``samples.npz`` one process writes, byte for byte in its array;
- a run killed after 3 images (a test hook ending the process with ``os._exit``) and rerun gives the same array,
  and so does a 2-rank run whose rank 1 fails, resumed by one process;
- when rank 1 fails, rank 0 stops with an error naming it, and both processes end by themselves (two ranks joined
  as torchrun joins them, but without a launcher that would tear the job down; the timeout is the no-hang check);
- bad input: a rerun with other settings, prompts for a class-conditional model, a labels file out of range,
  text-to-image options, an unwritable folder.

Every run computes in one thread (the subprocesses get OMP_NUM_THREADS=1; this module sets torch's thread count
to 1), so all of them are the same computation.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bitdance_rt.cli import main
from bitdance_rt.errors import InvalidRequestError
from bitdance_rt.runtime import Runtime
from bitdance_rt.sampling import InputFileError, SampleSettings, SamplingError, sample
from bitdance_rt.sampling.test_hooks import ENV as HOOK_ENV, EXIT_CODE
from sampling_helpers import npz_samples, png, run_cli, run_ranks_without_launcher

pytestmark = pytest.mark.usefixtures("single_thread")

N, STEPS, BATCH = 8, 2, 4


@pytest.fixture(scope="module")
def c2i_runtime(c2i16_files, single_thread) -> Runtime:
    model, tokenizer = c2i16_files
    # the batch a run with --batch-size 4 loads: 4 guided images, 2 rows each
    return Runtime.from_pretrained(model, tokenizer_path=tokenizer, device="cpu", dtype=torch.float32,
                                   max_batch=2 * BATCH)


def settings(c2i16_files, out: Path, **fields) -> SampleSettings:
    model, tokenizer = c2i16_files
    values = dict(out=out, model=model, tokenizer=tokenizer, num_samples=N, num_sampling_steps=STEPS,
                  batch_size=BATCH, progress=False)
    values.update(fields)
    return SampleSettings(**values)


def cli_args(c2i16_files, out: Path) -> list[str]:
    model, tokenizer = c2i16_files
    return ["sample", str(model), "--tokenizer", str(tokenizer), "--num-samples", str(N), "--steps", str(STEPS),
            "--batch-size", str(BATCH), "--out", str(out), "--no-progress"]


@pytest.fixture(scope="module")
def reference(c2i16_files, c2i_runtime, tmp_path_factory):
    """One process, in this one: the array every other run must reproduce (with --png, and the notes on stderr)."""
    out = tmp_path_factory.mktemp("reference")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        summary = sample(settings(c2i16_files, out, png=True, progress=True), runtime=c2i_runtime)
    return out, summary, err.getvalue()


def test_one_process_writes_the_npz_labels_and_pngs(reference):
    out, summary, stderr = reference
    samples = npz_samples(out)
    assert samples.shape == (N, 256, 256, 3) and samples.dtype == np.uint8
    assert len({samples[i].tobytes() for i in range(N)}) == N  # distinct seeds and classes, distinct images
    for i in range(N):
        assert np.array_equal(png(out / "images" / f"{i:06d}.png"), samples[i])
    # balanced labels: class i*1000//8, the release's spreading; 8 < 1000 classes is said, not hidden
    assert (out / "labels.txt").read_text().split() == [str(i * 125) for i in range(N)]
    assert "note: 8 samples for 1000 classes: only 8 classes get an image" in stderr and "sampling" in stderr
    assert (summary.new_images, summary.already_done, summary.per_rank) == (N, 0, [N])
    record = json.loads((out / "run.json").read_text())
    assert record["complete"] is True and record["resolved"]["guidance_scale"] == 4.0
    assert record["settings"]["seed"] == 0 and record["settings"]["max_batch"] == 2 * BATCH
    assert sorted(p.name for p in out.iterdir()) == ["images", "labels.txt", "run.json", "samples.npz"]


def test_two_ranks_write_what_one_process_writes(reference, c2i16_files, tmp_path: Path):
    out = tmp_path / "two_ranks"
    proc = run_cli(cli_args(c2i16_files, out), ranks=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert np.array_equal(npz_samples(out), npz_samples(reference[0]))
    assert "8 made now, 0 were already there" in proc.stdout and "(rank 0: 4, rank 1: 4)" in proc.stdout
    assert not (out / "images").exists()  # without --png only the archive stays


def test_killed_run_resumes_to_the_same_images(reference, c2i16_files, c2i_runtime, tmp_path: Path):
    out = tmp_path / "killed"
    proc = run_cli(cli_args(c2i16_files, out), **{HOOK_ENV: "exit:0:3"})
    assert proc.returncode == EXIT_CODE, proc.stderr[-3000:]
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{i:06d}.png" for i in range(3)]
    assert not (out / "samples.npz").exists()
    (out / ".tmp" / "000003.png.999.1.tmp").write_bytes(b"half a PNG")  # what a kill mid-write leaves

    with pytest.raises(SamplingError, match=r"other settings \(seed: 0 recorded, 1 now\)"):
        sample(settings(c2i16_files, out, seed=1), runtime=c2i_runtime)

    summary = sample(settings(c2i16_files, out), runtime=c2i_runtime)  # the same command, resumed
    assert (summary.already_done, summary.new_images) == (3, N - 3)
    assert np.array_equal(npz_samples(out), npz_samples(reference[0]))
    assert not (out / ".tmp").exists() and not (out / "images").exists()
    runs = json.loads((out / "run.json").read_text())["runs"]
    assert [r["finished"] for r in runs] == [False, True] and runs[1]["already_done"] == 3

    again = sample(settings(c2i16_files, out), runtime=c2i_runtime)  # a finished run: nothing left to do
    assert (again.already_done, again.new_images) == (N, 0)


def test_failing_rank_stops_the_other_and_the_run_resumes(reference, c2i16_files, c2i_runtime, tmp_path: Path):
    out = tmp_path / "failed"
    # two ranks joined as torchrun joins them, with no launcher to end the job: each must stop by itself
    rank0, rank1 = run_ranks_without_launcher(cli_args(c2i16_files, out), 2, **{HOOK_ENV: "raise:1:2"})
    assert rank1.returncode == 1 and "RuntimeError: test hook: rank 1 fails after 2 images" in rank1.stderr
    assert rank0.returncode == 2, rank0.stderr[-3000:]
    assert rank0.stderr.startswith("bitdance-rt sample: rank 1 on ")  # one line naming the rank and its error
    assert "failed: RuntimeError: test hook: rank 1 fails after 2 images. Rank 0 stopped too" in rank0.stderr
    statuses = [json.loads((out / ".status" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [s["phase"] for s in statuses] == ["stopped", "failed"]

    summary = sample(settings(c2i16_files, out), runtime=c2i_runtime)  # one process finishes the 2-rank run
    assert summary.already_done >= 2 and summary.already_done + summary.new_images == N
    assert np.array_equal(npz_samples(out), npz_samples(reference[0]))


def test_bad_inputs(c2i16_files, c2i_runtime, tmp_path: Path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\n")
    with pytest.raises(InvalidRequestError, match="takes class labels, not prompts") as e:
        sample(settings(c2i16_files, tmp_path / "a", num_samples=None, prompts=prompts), runtime=c2i_runtime)
    assert e.value.param == "prompts"

    labels = tmp_path / "labels.txt"
    labels.write_text("1\n2\n1000\n")
    with pytest.raises(InputFileError, match=r"labels.txt, line 3: class 1000 is out of range"):
        sample(settings(c2i16_files, tmp_path / "b", num_samples=None, labels=str(labels)), runtime=c2i_runtime)

    # the command line: one line on stderr and exit code 2, before any model is loaded
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    args = cli_args(c2i16_files, blocker / "out")
    assert main(args) == 2
    assert "cannot write to the output folder" in capsys.readouterr().err
    assert main(cli_args(c2i16_files, tmp_path / "c") + ["--layout", "geneval"]) == 2
    assert "--layout is for text-to-image runs" in capsys.readouterr().err
