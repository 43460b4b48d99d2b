"""``bench/e2e.py`` without a GPU: its ``--tiny`` run end to end (reference backend, in a subprocess), the released
shapes' parameter counts and floors against spec §4 and the paper, random-weight models of scaled-down shapes
through the reference backend, the stage clock's attribution through the engine wrappers, and the target verdicts.
The GPU path (bf16 released shapes, CUDA events, the engine's graphs) cannot run here."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import e2e  # noqa: E402
import model_shapes  # noqa: E402

from bitdance_rt.reference.c2i_backbone import C2IConfig  # noqa: E402
from bitdance_rt.reference.diffusion_head import DiffusionHeadConfig  # noqa: E402
from bitdance_rt.reference.qwen3 import Qwen3Config  # noqa: E402
from bitdance_rt.reference.token_decoder import DecoderLayout  # noqa: E402
from bitdance_rt.runtime import Runtime  # noqa: E402

SPEC_BANDWIDTH, SPEC_MATMUL = 3e12, 800e12  # spec §4's round H100 figures
SPEC_TOLERANCE = 0.05  # spec §4 quotes rounded figures; ours count exactly what each pass reads
PAPER_TOLERANCE = 0.01


def test_tiny_run_writes_every_field(tmp_path):
    out = tmp_path / "e2e.json"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "bench/e2e.py", "--tiny", "--backends", "reference", "--steps", "1",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert time.perf_counter() - start < 60
    data = json.loads(out.read_text())
    assert set(data["environment"]) == {"gpu", "driver", "torch", "triton", "commit"}
    assert data["tiny"] is True and data["dtype"] == "float32"
    assert data["rates"] == {"copy_bytes_per_s": None, "matmul_flops_per_s": None}
    runs = {r["model"]: r for r in data["runs"]}
    assert set(runs) == {"tiny-t2i-64x", "tiny-c2i-16x"}
    expected = {"tiny-t2i-64x": (512, 512, 64), "tiny-c2i-16x": (256, 256, 16)}
    for name, run in runs.items():
        height, width, parallel = expected[name]
        assert (run["height"], run["width"], run["parallel"], run["steps"], run["batch"]) == (height, width, parallel,
                                                                                              1, 1)
        assert run["ar_steps"] == (height // 16) * (width // 16) // parallel == 16
        assert f"== {name}" in proc.stdout
        assert set(run["backends"]) == {"reference"} and run["targets"] == []
        ref = run["backends"]["reference"]
        assert set(ref["stages_s"]) == set(e2e.STAGES)
        assert all(ref["stages_s"][s] > 0 for s in ("prefill", "backbone", "head", "decode"))
        assert ref["total_s"] == pytest.approx(ref["tokens_s"] + ref["stages_s"]["decode"])
        assert ref["per_image_s"] == pytest.approx(ref["total_s"])
        assert ref["repeatable"] == 1.0  # the reference on the CPU in float32 is deterministic per seed
        assert ref["peak_gib"] is None
        # floors: the bytes each stage reads, from the parameter roles (float32: 4 bytes)
        roles, floors = run["parameters"], run["floors"]
        assert floors["weight_s"] is None and floors["compute_s"] is None
        assert floors["bytes"]["prefill"] == 4 * roles["backbone"]
        assert floors["bytes"]["backbone"] == 4 * 15 * (roles["backbone"] + roles["feed"])
        assert floors["bytes"]["head"] == 4 * 16 * (roles["head_cond"] + 2 * roles["head_pass"])
        rows = 2  # one image, guided
        assert floors["flops"]["head"] == 2 * (roles["head_cond"] + 2 * roles["head_pass"]) * rows * 16 * parallel


def test_released_parameter_counts_match_the_paper_and_spec():
    roles = {name: model_shapes.parameter_roles(s.part_shapes()) for name, s in model_shapes.RELEASED.items()}
    t2i = roles["14B-64x"]
    assert t2i.backbone == pytest.approx(13.2e9, rel=PAPER_TOLERANCE)  # spec §4: 13.2B non-embedding
    assert t2i.head_pass + t2i.head_cond + t2i.head_time == pytest.approx(1.76e9, rel=PAPER_TOLERANCE)
    paper = {"B-1x": 242e6, "B-4x": 260e6, "B-16x": 260e6, "L-1x": 527e6, "H-1x": 1.0e9}
    for name, params in paper.items():
        assert roles[name].total - roles[name].decoder == pytest.approx(params, rel=PAPER_TOLERANCE), name


def _floor_seconds(name: str, batch: int) -> tuple[float, float]:
    """(weight-streaming, compute) seconds per image at spec §4's rates, 1024x1024, 50 steps, guided."""
    shape = model_shapes.RELEASED[name]
    num_ar = 64 * 64 // shape.parallel
    prefixes = [30 + 3 + shape.parallel - 1] * 2 * batch
    work = e2e.stage_work(model_shapes.parameter_roles(shape.part_shapes()), prefixes, shape.parallel, num_ar, 50, 2)
    weight = sum(w["bytes"] for w in work.values()) / SPEC_BANDWIDTH / batch
    compute = sum(w["flops"] for w in work.values()) / SPEC_MATMUL / batch
    return weight, compute


def test_floors_match_spec_section_4():
    weight, _ = _floor_seconds("14B-64x", 1)
    assert weight == pytest.approx(4.4, rel=SPEC_TOLERANCE)  # "≈ 4.4 s per image"
    _, compute = _floor_seconds("14B-64x", 8)
    assert compute == pytest.approx(2.1, rel=SPEC_TOLERANCE)  # "~2.1 s per image ... at ~800 TFLOP/s"
    weight_16x, _ = _floor_seconds("14B-16x", 1)
    assert weight_16x == pytest.approx(17.6, rel=SPEC_TOLERANCE)  # "~17.6 s at batch 1"


def _small_t2i() -> model_shapes.T2IShape:
    backbone = Qwen3Config(vocab_size=600, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
                           rope_theta=1e6)
    head = DiffusionHeadConfig(token_channels=32, cond_channels=64, width=128, depth=2, num_adaln=2,
                               block_kind="trans", attn_head_dim=64, use_swiglu=True, sigmoid_output=True)
    return model_shapes.T2IShape("small-t2i", backbone, head, DecoderLayout(32, (32,) * 5, 1, 3, False), 64)


def _small_c2i() -> model_shapes.C2IShape:
    head = DiffusionHeadConfig(token_channels=32, cond_channels=64, width=128, depth=2, num_adaln=2,
                               block_kind="trans", attn_head_dim=64)
    return model_shapes.C2IShape("small-c2i", C2IConfig(dim=64, num_layers=2, num_heads=1, token_channels=32,
                                                        parallel=16), head, DecoderLayout(32, (32,) * 5, 1, 3, False))


@pytest.mark.parametrize("make", [_small_t2i, _small_c2i])
def test_random_models_generate(make, single_thread):
    shape = make()
    model = model_shapes.build_model(shape, torch.device("cpu"), torch.float32, seed=3)
    assert model_shapes.model_parts(model) == shape.part_shapes()
    weight = model.head.res_blocks[0].w2.weight  # [width, 1.5·width]: std 1/sqrt(fan_in)
    assert weight.std().item() == pytest.approx(1 / math.sqrt(weight.shape[1]), rel=0.05)
    assert torch.equal(model.head.res_blocks[0].norm1.weight, torch.ones(128))
    runtime = Runtime(model, torch.device("cpu"), torch.float32, "reference")
    if shape.family == "t2i":
        out = runtime.generate("a fox", height=512, width=512, num_sampling_steps=1, seed=0, output_type="tokens")
        assert out.tokens.shape == (1, 1024, 32)
    else:
        out = runtime.generate(class_labels=[1, 2], num_sampling_steps=1, seed=0, output_type="tokens")
        assert out.tokens.shape == (2, 256, 32)
    values = out.tokens.float()
    assert (values > 0).float().mean() > 0.05 and (values < 0).float().mean() > 0.05


class _FakeStep:
    buffers = "static buffers"

    def head(self, seconds: float) -> str:
        time.sleep(seconds)
        return "tokens"

    def decode(self) -> None:
        time.sleep(0.01)


class _FakeEngine:
    """Calls what the engines call: ``prefill``, ``ar_step``, then per AR step ``head`` and ``decode``."""

    def prefill(self) -> None:
        time.sleep(0.03)

    def ar_step(self) -> _FakeStep:
        return _FakeStep()

    def generate_tokens(self) -> None:
        self.prefill()
        step = self.ar_step()
        for _ in range(3):
            assert step.head(0.02) == "tokens"
            step.decode()
        assert step.buffers == "static buffers"


def test_engine_wrappers_attribute_stages_and_are_removed():
    engine = _FakeEngine()
    clock = e2e.StageClock(torch.device("cpu"))
    with e2e.engine_stages(engine, clock):
        clock.enter("other")
        engine.generate_tokens()
    seconds = clock.stop()
    assert set(seconds) == {"other", "prefill", "head", "backbone"}
    assert 0.03 <= seconds["prefill"] < 1 and 0.06 <= seconds["head"] < 1 and 0.03 <= seconds["backbone"] < 1
    assert vars(engine) == {}  # the instance attributes are gone: the class's methods are back


def _run(engine_total: float, stages: dict[str, float]) -> dict:
    return {"batch": 1, "height": 1024, "width": 1024, "steps": 50, "guidance": 7.5,
            "floors": {"weight_s": {"prefill": 0.01, "backbone": 0.5, "head": 3.7},
                       "compute_s": {"prefill": 0.001, "backbone": 0.02, "head": 0.2},
                       "weight_total_s": 4.21, "compute_total_s": 0.221},
            "backends": {"reference": {"total_s": 15.0},
                         "triton": {"total_s": engine_total, "images_per_s": 1 / engine_total, "stages_s": stages}}}


def test_target_verdicts():
    met = _run(5.0, {"prefill": 0.02, "backbone": 0.6, "head": 4.2, "decode": 0.15, "other": 0.03})
    verdicts = {v["metric"]: v for v in e2e.verdicts(met, "14B-64x")}
    assert set(verdicts) == {"speedup", "weight_floor"}  # batch 8's compute target does not apply to batch 1
    assert verdicts["speedup"]["met"] and verdicts["speedup"]["value"] == pytest.approx(3.0)
    assert verdicts["weight_floor"]["met"] and verdicts["weight_floor"]["value"] == pytest.approx(5.0 / 4.21)
    missed = _run(7.5, {"prefill": 0.02, "backbone": 0.6, "head": 6.7, "decode": 0.15, "other": 0.03})
    verdicts = {v["metric"]: v for v in e2e.verdicts(missed, "14B-64x")}
    assert not verdicts["speedup"]["met"] and "MISSED by 50%" in verdicts["speedup"]["text"]  # 3 / 2 - 1
    assert "MISSED by 19%" in verdicts["weight_floor"]["text"]  # 7.5 / 4.21 / 1.5 - 1
    assert "head takes 6.700 s/image, 1.81x its floor" in verdicts["weight_floor"]["text"]
    missed["targets"] = list(verdicts.values())
    assert e2e.summary_line(missed).startswith("batch 1: 2.00x faster than reference (target >= 3x: MISSED")
    assert e2e.verdicts(met, "14B-16x") == []


def test_floor_rows_from_rates(capsys, single_thread):
    """With rates (made up here, measured on a GPU) each stage's floor is its bytes / bandwidth and FLOPs / matmul
    rate, and the table prints both floor rows."""
    cpu = torch.device("cpu")
    model = model_shapes.build_model(_small_c2i(), cpu, torch.float32)
    args = e2e.parse_args(["--tiny", "--steps", "1", "--backends", "reference"])
    rates = {"copy_bytes_per_s": 3e12, "matmul_flops_per_s": 8e14}
    (run,) = e2e.run_model("small-c2i", model, args, cpu, torch.float32, rates)
    floors = run["floors"]
    for stage in e2e.FLOOR_STAGES:
        assert floors["weight_s"][stage] == floors["bytes"][stage] / 3e12
        assert floors["compute_s"][stage] == floors["flops"][stage] / 8e14
    assert floors["weight_total_s"] == pytest.approx(sum(floors["bytes"].values()) / 3e12)
    out = capsys.readouterr().out
    assert "weight floor" in out and "compute floor" in out and "== small-c2i" in out
