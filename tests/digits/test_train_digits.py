"""``tools/train_digits.py`` on a few steps: it writes files the normal loader reads, with every size taken from the
files, and the same seed writes the same weights."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from bitdance_rt.digits.assets import MODEL_FILE, RECORD_FILE, TOKENIZER_FILE
from bitdance_rt.runtime import Runtime

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "train_digits.py"
QUICK = ["--tokenizer-steps", "2", "--generator-steps", "2", "--classifier-steps", "2", "--batch", "4",
         "--skip-gate"]


@pytest.fixture(scope="module")
def train_digits():
    pytest.importorskip("sklearn")
    spec = importlib.util.spec_from_file_location("train_digits", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(train_digits, out: Path) -> None:
    threads = torch.get_num_threads()
    try:
        assert train_digits.main(["--out", str(out), *QUICK]) == 0
    finally:
        torch.set_num_threads(threads)


def test_quick_run_loads_and_is_deterministic(train_digits, tmp_path: Path):
    run(train_digits, tmp_path / "a")
    run(train_digits, tmp_path / "b")
    for name in (MODEL_FILE, TOKENIZER_FILE):
        a = torch.load(str(tmp_path / "a" / name), weights_only=True)
        b = torch.load(str(tmp_path / "b" / name), weights_only=True)
        entry = "ema" if name == MODEL_FILE else "state_dict"
        assert a[entry].keys() == b[entry].keys()
        assert all(torch.equal(a[entry][k], b[entry][k]) for k in a[entry]), name
    record = json.loads((tmp_path / "a" / RECORD_FILE).read_text())
    assert record["seed"] == 0 and record["script_version"] == train_digits.SCRIPT_VERSION
    rt = Runtime.from_pretrained(tmp_path / "a" / MODEL_FILE, tokenizer_path=tmp_path / "a" / TOKENIZER_FILE,
                                 device="cpu", dtype=torch.float32)
    assert (rt.model.config.num_classes, rt.model.config.class_tokens, rt.parallel) == (10, 4, 4)
    out = rt.generate(class_labels=[0, 9], num_sampling_steps=1, guidance_scale=2.0, seed=0, output_type="np")
    assert out.images.shape == (2, 16, 16, 3)
    # the checkpoint's own vae.decoder copy is the tokenizer file's decoder
    own = Runtime.from_pretrained(tmp_path / "a" / MODEL_FILE, device="cpu", dtype=torch.float32)
    assert torch.equal(own.model.decoder.conv_out.weight, rt.model.decoder.conv_out.weight)
