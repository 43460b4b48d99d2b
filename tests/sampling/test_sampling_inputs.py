"""Bulk sampling's inputs and outputs without a model: the prompt files of each layout (and their errors, with the
line), class labels (the release's balanced order, uneven counts, random, files), the DPG grid, the streamed
``samples.npz``, the output folder's checks and ``run.json``'s comparison, and the settings checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bitdance_rt.errors import InvalidRequestError
from bitdance_rt.sampling import InputFileError, SampleSettings, SamplingError
from bitdance_rt.sampling.labels import balanced_labels, balanced_notice, plan_labels, random_labels
from bitdance_rt.sampling.layouts import grid_of
from bitdance_rt.sampling.npz_writer import write_samples_npz
from bitdance_rt.sampling.prompt_files import infer_layout, read_prompts
from bitdance_rt.sampling.run_record import check_same_settings, prepare_out_dir
from bitdance_rt.sampling.settings import precheck
from sampling_helpers import GENEVAL_LINES, write_dpg_json, write_geneval


# ---------------------------------------------------------------------------------------------------- prompt files
def test_geneval_file(tmp_path: Path):
    path = write_geneval(tmp_path / "evaluation_metadata.jsonl")
    entries = read_prompts(path, "geneval")
    assert [e.prompt for e in entries] == [line["prompt"] for line in GENEVAL_LINES]
    assert [e.key for e in entries] == ["0", "1"] and [e.line for e in entries] == [1, 2]
    assert [json.loads(e.metadata) for e in entries] == GENEVAL_LINES  # written back as metadata.jsonl
    assert infer_layout(path) == "geneval"


@pytest.mark.parametrize("text, line, words", [
    ('{"prompt": "a cat"}\n{"prompt": "a dog",\n', 2, "is not JSON"),
    ('{"prompt": "a cat"}\n\n{"tag": "single_object"}\n', 3, 'no "prompt" field'),
    ('{"prompt": "a cat"}\n[1, 2]\n', 2, 'no "prompt" field'),
    ('{"prompt": 7}\n', 1, "not a string"),
    ('{"prompt": "   "}\n', 1, "is empty"),
])
def test_geneval_file_errors_name_the_line(tmp_path: Path, text: str, line: int, words: str):
    path = tmp_path / "meta.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputFileError) as e:
        read_prompts(path, "geneval")
    assert e.value.line == line and f"{path}, line {line}:" in str(e.value) and words in str(e.value)


def test_dpg_json_and_folder(tmp_path: Path):
    table = {"0": "three red apples on a wooden table", "17": "a lighthouse at dusk", "partiprompts5": "a kite"}
    entries = read_prompts(write_dpg_json(tmp_path / "prompts.json", table), "dpg")
    assert [(e.key, e.prompt) for e in entries] == list(table.items())
    assert [e.line for e in entries] == [2, 3, 4]
    folder = tmp_path / "prompts"
    folder.mkdir()
    for key, prompt in table.items():
        (folder / f"{key}.txt").write_text(prompt + "\n", encoding="utf-8")
    from_folder = read_prompts(folder, "dpg")
    assert [(e.key, e.prompt) for e in from_folder] == [("0", table["0"]), ("17", table["17"]),
                                                        ("partiprompts5", table["partiprompts5"])]
    assert infer_layout(folder) == "dpg" and infer_layout(tmp_path / "prompts.json") == "dpg"


@pytest.mark.parametrize("text, line, words", [
    ('{\n    "0": "a cat",\n    "1": "a dog"\n    "2": "a cow"\n}\n', 4, "is not JSON"),
    ('{\n    "0": "a cat",\n    "0": "a dog"\n}\n', 2, "appears twice"),
    ('{\n    "0": "a cat",\n    "1": ["a dog"]\n}\n', 3, "not a string"),
    ('{\n    "0": "a cat",\n    "../evil": "a dog"\n}\n', 3, "cannot name an image file"),
    ('["a cat"]\n', 1, "JSON list"),
])
def test_dpg_json_errors_name_the_line(tmp_path: Path, text: str, line: int, words: str):
    path = tmp_path / "prompts.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputFileError) as e:
        read_prompts(path, "dpg")
    assert e.value.line == line and f", line {line}:" in str(e.value) and words in str(e.value)


def test_plain_file(tmp_path: Path):
    path = tmp_path / "prompts.txt"
    path.write_bytes("a red fox\n\n  a blue car  \r\nün café\n".encode("utf-8"))
    entries = read_prompts(path, "plain")
    assert [(e.key, e.prompt, e.line) for e in entries] == [("0", "a red fox", 1), ("1", "a blue car", 3),
                                                             ("2", "ün café", 4)]
    path.write_bytes(b"a red fox\na blue \xff car\n")
    with pytest.raises(InputFileError, match=r"prompts.txt, line 2: is not UTF-8 text \(byte 0xff at column 8\)"):
        read_prompts(path, "plain")
    path.write_text("\n \n", encoding="utf-8")
    with pytest.raises(InputFileError, match="holds no prompts"):
        read_prompts(path, "plain")
    with pytest.raises(InputFileError, match="does not exist"):
        read_prompts(tmp_path / "missing.txt", "plain")


# ---------------------------------------------------------------------------------------------------- labels
def test_balanced_labels_are_the_releases_when_n_is_a_multiple():
    assert balanced_labels(50_000, 1000) == np.arange(1000).repeat(50).tolist()
    assert balanced_labels(12, 4) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3] and balanced_notice(12, 4) is None


def test_balanced_labels_otherwise_spread_evenly_and_say_so():
    labels = balanced_labels(10, 4)
    assert labels == sorted(labels) and sorted(np.bincount(labels).tolist()) == [2, 2, 3, 3]
    notice = balanced_notice(10, 4)
    assert "10 samples is not a multiple of the model's 4 classes" in notice and "2 classes get 3 images" in notice
    assert "only 8 classes get an image" in balanced_notice(8, 1000)
    assert balanced_labels(8, 1000) == [0, 125, 250, 375, 500, 625, 750, 875]


def test_random_labels_follow_the_seed():
    a = random_labels(20, 1000, seed=3)
    assert a == random_labels(20, 1000, seed=3) != random_labels(20, 1000, seed=4)
    assert all(0 <= c < 1000 for c in a)
    plan = plan_labels("random", 20, 1000, 3)
    assert plan.labels == a and plan.mode == "random"


def test_label_files(tmp_path: Path):
    path = tmp_path / "labels.txt"
    path.write_text("# classes\n3\n\n7\n 999 \n", encoding="utf-8")
    plan = plan_labels(str(path), None, 1000, 0)
    assert plan.labels == [3, 7, 999] and plan.mode == "file"
    with pytest.raises(InputFileError, match="holds 3 class ids but --num-samples is 4"):
        plan_labels(str(path), 4, 1000, 0)
    path.write_text("3\n1000\n", encoding="utf-8")
    with pytest.raises(InputFileError, match=r"line 2: class 1000 is out of range: this model has 1000 classes"):
        plan_labels(str(path), None, 1000, 0)
    path.write_text("3\nseven\n", encoding="utf-8")
    with pytest.raises(InputFileError, match=r"line 2: 'seven' is not a class id"):
        plan_labels(str(path), None, 1000, 0)


# ---------------------------------------------------------------------------------------------------- outputs
def test_grid_of_is_dpg_benchs_crop_order():
    images = [np.full((4, 6, 3), v, dtype=np.uint8) for v in (10, 20, 30, 40)]
    grid = grid_of(images)
    assert grid.shape == (8, 12, 3)
    # compute_dpg_bench.py's crops of a square grid: top left, top right, bottom left, bottom right
    crops = [grid[0:4, 0:6], grid[0:4, 6:12], grid[4:8, 0:6], grid[4:8, 6:12]]
    assert [int(c.mean()) for c in crops] == [10, 20, 30, 40]
    assert grid_of(images[:2]).shape == (4, 12, 3) and grid_of(images[:1]).shape == (4, 6, 3)
    three = grid_of(images[:3])
    assert three.shape == (8, 12, 3) and not three[4:, 6:].any()


def test_samples_npz_is_what_numpy_writes(tmp_path: Path):
    images = np.random.default_rng(0).integers(0, 256, (70, 5, 4, 3), dtype=np.uint8)
    write_samples_npz(tmp_path / "samples.npz", 70, lambda i: images[i], tmp_path)
    np.savez(tmp_path / "reference.npz", arr_0=images)
    with np.load(tmp_path / "samples.npz") as ours, np.load(tmp_path / "reference.npz") as ref:
        assert ours.files == ["arr_0"] and np.array_equal(ours["arr_0"], ref["arr_0"])
    bad = dict(enumerate(images))
    bad[33] = images[33][:4]
    with pytest.raises(ValueError, match="image 33 is uint8"):
        write_samples_npz(tmp_path / "bad.npz", 70, bad.__getitem__, tmp_path)
    assert not (tmp_path / "bad.npz").exists()


def test_output_folder_checks(tmp_path: Path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(SamplingError, match="is a file; pass a folder"):
        prepare_out_dir(a_file)
    with pytest.raises(SamplingError, match="cannot write to the output folder .*NotADirectoryError"):
        prepare_out_dir(a_file / "inside")
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_text("x")
    with pytest.raises(SamplingError, match=r"is not empty \(holiday.jpg\) and has no run.json"):
        prepare_out_dir(mine)
    prepare_out_dir(tmp_path / "new" / "run")
    assert (tmp_path / "new" / "run" / ".tmp").is_dir()


def test_recorded_settings_are_compared(tmp_path: Path):
    record = {"settings": {"seed": 0, "guidance_scale": None, "model": {"name": "m.pt", "bytes": 10}}}
    check_same_settings(record, {"seed": 0, "guidance_scale": None, "model": {"name": "m.pt", "bytes": 10}}, tmp_path)
    with pytest.raises(SamplingError) as e:
        check_same_settings(record, {"seed": 1, "guidance_scale": 4.0, "model": {"name": "m.pt", "bytes": 11}},
                            tmp_path)
    message = str(e.value)
    assert "run.json was written by a run with other settings" in message
    assert "seed: 0 recorded, 1 now" in message and "guidance_scale: null recorded, 4.0 now" in message
    assert "model.bytes: 10 recorded, 11 now" in message and "choose another --out" in message


@pytest.mark.parametrize("fields, param", [
    ({"num_samples": 0}, "num-samples"),
    ({"num_samples": 8, "batch_size": 0}, "batch-size"),
    ({"num_samples": 8, "layout": "geneval"}, "layout"),
    ({"prompts": "p.txt", "num_samples": 8}, "num-samples"),
    ({"prompts": "p.txt", "png": True}, "png"),
    ({}, "num_samples"),
    ({"num_samples": 8, "quantization": "int4"}, "quantization"),
    ({"num_samples": 8, "seed": 2 ** 63 - 4}, "seed"),
    ({"num_samples": 8, "timeout_s": 0}, "timeout"),
])
def test_settings_prechecks(fields: dict, param: str, tmp_path: Path):
    with pytest.raises(InvalidRequestError) as e:
        precheck(SampleSettings(out=tmp_path, model="m.pt", **fields))
    assert e.value.param == param
