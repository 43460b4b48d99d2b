"""The ``bitdance-rt`` command line, called in-process through ``bitdance_rt.cli.main``.

``info`` on both tiny families (text and ``--json``), ``generate`` writing PNGs of the right size from the tiny
text-to-image and class-conditional models, the error path (exit code 2, one line on stderr), and ``demo``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from bitdance_rt.cli import main


def _parameter_total(info: dict) -> int:
    return sum(v for k, v in info["parameters"].items() if k != "total")


def test_info_t2i(t2i64_dir: Path, capsys):
    assert main(["info", str(t2i64_dir)]) == 0
    out = capsys.readouterr().out
    assert "text-to-image" in out and "tokens_per_step: 64" in out
    assert "parameters" in out and "backbone=" in out and "head=" in out and "projector=" in out

    assert main(["info", str(t2i64_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "text-to-image" and info["tokens_per_step"] == 64
    assert info["backbone"]["hidden"] == 64 and info["backbone"]["layers"] == 2
    assert info["head"]["kind"] == "TransBlock" and info["decoder"]["downsample"] == 16
    assert info["parameters"]["total"] == _parameter_total(info) > 0
    # backbone weights are stored in bfloat16 by the tiny writer, like the release's shards
    # 2 layers x 11 tensors + embed_tokens + norm (lm_head is not read)
    assert info["stored_dtypes"]["backbone"] == {"BF16": 24}
    assert info["stored_dtypes"]["projector"] == {"F32": 4}


@pytest.mark.parametrize("files_fixture, parallel, head_kind", [("c2i16_files", 16, "TransBlock"),
                                                                ("c2i1_files", 1, "ResBlock")])
def test_info_c2i(files_fixture: str, parallel: int, head_kind: str, request, capsys):
    model, tokenizer = request.getfixturevalue(files_fixture)
    assert main(["info", str(model), "--tokenizer", str(tokenizer)]) == 0
    out = capsys.readouterr().out
    assert "class-conditional" in out and f"tokens_per_step: {parallel}" in out and "parameters" in out

    assert main(["info", str(model), "--tokenizer", str(tokenizer), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "class-conditional" and info["tokens_per_step"] == parallel
    assert info["head"]["kind"] == head_kind
    state = torch.load(str(model), weights_only=True)["ema"]
    assert info["parameters"]["head"] == sum(v.numel() for k, v in state.items() if k.startswith("head."))
    assert info["parameters"]["total"] == _parameter_total(info)


def test_generate_t2i(t2i64_dir: Path, tmp_path: Path, capsys):
    out_file = tmp_path / "fox.png"
    code = main(["generate", str(t2i64_dir), "a red fox in the snow", "--height", "512", "--width", "512",
                 "--steps", "1", "--seed", "3", "--device", "cpu", "--out", str(out_file), "--no-progress"])
    assert code == 0
    assert f"wrote {out_file}" in capsys.readouterr().out
    with Image.open(out_file) as image:
        assert image.format == "PNG" and image.size == (512, 512) and image.mode == "RGB"


def test_generate_c2i_two_images(c2i16_files, tmp_path: Path, capsys):
    model, tokenizer = c2i16_files
    out_file = tmp_path / "class.png"
    code = main(["generate", str(model), "--class", "3", "--tokenizer", str(tokenizer), "--steps", "1",
                 "--seed", "0", "--device", "cpu", "--num-images", "2", "--out", str(out_file), "--no-progress"])
    assert code == 0
    stdout = capsys.readouterr().out
    for k in range(2):
        path = tmp_path / f"class_{k}.png"
        assert f"wrote {path}" in stdout
        with Image.open(path) as image:
            assert image.size == (256, 256)
    assert "seed 0" in stdout


def test_generate_c2i_from_checkpoint_decoder(c2i1_files, tmp_path: Path):
    """Without --tokenizer the checkpoint's own vae.decoder decodes (P = 1, one sampling step)."""
    model, _ = c2i1_files
    out_file = tmp_path / "p1.png"
    assert main(["generate", str(model), "--class", "3", "--steps", "1", "--seed", "0", "--device", "cpu",
                 "--out", str(out_file), "--no-progress"]) == 0
    with Image.open(out_file) as image:
        assert image.size == (256, 256)


@pytest.mark.parametrize("argv, part", [
    (["generate", "{t2i}", "a cat", "--height", "500", "--width", "500", "--device", "cpu"], "500x500"),
    (["generate", "{t2i}", "a cat", "--class", "3", "--device", "cpu"], "--class"),
    (["generate", "{t2i}", "a cat", "--device", "tpu"], "tpu"),
    (["info", "{missing}"], "missing"),
])
def test_error_exits_2_with_one_line(argv: list[str], part: str, t2i64_dir: Path, tmp_path: Path, capsys):
    argv = [a.format(t2i=t2i64_dir, missing=tmp_path / "missing") for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"bitdance-rt {argv[0]}: ") and part in lines[0]
    assert "Traceback" not in captured.err
    assert not list(tmp_path.glob("*.png"))


def test_demo(tmp_path: Path, capsys):
    out_dir = tmp_path / "demo"
    assert main(["demo", "--tiny-random", "--steps", "1", "--out", str(out_dir)]) == 0
    stdout = capsys.readouterr().out
    image_path = out_dir / "demo.png"
    assert str(image_path.resolve()) in stdout
    assert "noise" in stdout
    with Image.open(image_path) as image:
        assert image.size == (512, 512)


def test_info_reports_the_kernel_choice(t2i64_dir: Path, capsys):
    """``info`` says which backend and, for the engine, which provider each operation would get here."""
    assert main(["info", str(t2i64_dir), "--json", "--device", "cpu"]) == 0
    kernels = json.loads(capsys.readouterr().out)["kernels"]
    assert kernels["device"] == "cpu" and kernels["backend"].startswith("reference")
    # tests/conftest.py sets TRITON_INTERPRET=1 on a CPU machine: the Triton engine can be chosen
    assert main(["info", str(t2i64_dir), "--json", "--device", "cpu", "--backend", "triton"]) == 0
    kernels = json.loads(capsys.readouterr().out)["kernels"]
    assert kernels["backend"] == "triton" and "block_attention_decode" in kernels["triton"].split()
    assert "keyed_noise" in kernels["torch"].split()  # no Triton version: the PyTorch reference, said so
    assert main(["info", str(t2i64_dir), "--device", "cpu", "--backend", "cuda"]) != 0
    assert "hand-written CUDA kernels" in capsys.readouterr().err
