"""End-to-end benchmark: the engine (``backend="triton"``) beside the reference backend on random-weight models of
the released shapes, with the speed floors of spec §4 and the targets of issue 4.

Run from the repository root on a CUDA GPU::

    python bench/e2e.py [--models 14B-64x,14B-16x,B-1x,...,H-16x] [--batch 1,8] [--steps N] [--guidance G]
                        [--size 1024x1024] [--backends reference,triton] [--out bench/results/e2e-<gpu>-<commit>.json]
    python bench/e2e.py --throughput   # issue 13: 14B-64x batch 1/8/16, B-1x/4x/16x batch 64/256, engine only
    python bench/e2e.py --tiny   # the tiny models on the CPU, to check the plumbing without a GPU: the reference
                                 # backend, and the engine too when TRITON_INTERPRET=1 is set (Triton's interpreter)
    python bench/e2e.py --quantization fp8|int8 [--memory-cap-gib 24] ...   # 8-bit weights (issue 12)

``--quantization``: the built model's backbone and head linears are quantized in place (``quantize_linears``, the
loader's rule and per-tensor quantizers) and re-fused, as ``Runtime.from_pretrained(quantization=)`` holds them; the
weight-streaming floor then counts one byte per quantized parameter (the scales, 4 bytes per output row, are left
out), the compute floor keeps the bf16 matmul rate (fp8 tensor cores are faster: the floor is conservative).
``--memory-cap-gib G``: after the model is built and quantized, ``torch.cuda.set_per_process_memory_fraction`` caps
the process at G GiB for the runs (a run that does not fit fails with CUDA out-of-memory, recorded as such): the
"fits a 24 GB card" check of serving. Building the bf16 random weights before quantizing is not under the cap; the
loader's own peak (one tensor at a time) is a separate check.

Models are built in memory (``model_shapes.build_model``: bf16, random weights drawn on the GPU); each backend gets
a fresh ``Runtime`` over the same weights, one backend after the other (the engine's fused weights are views the
reference modules share), with the same prompt or labels and seed. Per backend and batch size:
1. warm-up: the engine runs the full request (Triton compiles, CUDA graphs are captured for the bucket); the
   reference runs one sampling step per AR step; both decode one chunk;
2. total: ``Runtime.generate(output_type="tokens")`` then ``Runtime.decode_tokens`` in chunks of at most
   4 megapixels (``--decode-chunk``), timed end to end; peak GPU memory (``max_memory_allocated`` after
   ``reset_peak_memory_stats``) over both;
3. stages: the same ``generate`` again with each stage switch synchronised and marked by a CUDA event: the
   reference's module calls (backbone, head, token embedder) switch stages through forward pre-hooks; the engine's
   ``prefill``, AR-step ``head`` / ``decode`` calls (graph replays on CUDA) through wrappers around them.
Stages: ``prefill``; ``backbone`` (the AR-step backbone passes, feeding the tokens back included); ``head`` (the
sampling loops, noise draws included); ``decode`` (the token decoder, from step 2); ``other`` (tokenization, setup).

Floors (spec §4) from the parameters by role (``model_shapes.ParameterRoles``) and the measured copy bandwidth and
bf16 matmul rate (``floors.py``): weight streaming = bytes of every weight pass (backbone per AR step and prefill,
the token embedder per fed-back step, ``cond_embed`` per AR step, N + 1 head passes per AR step) / bandwidth;
compute = 2 · parameters · tokens (each pass's tokens, both guidance rows) / matmul rate. Not counted: attention
over the KV cache and inside the head's patches, and the token decoder (no floor; its time is shown).

JSON (``--out``): the environment (GPU, driver, torch, triton, commit), the measured rates, and per model and batch
the settings, parameters by role, floors, each backend's times / memory, and the targets with their verdicts.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import floors
import model_shapes
import torch

from bitdance_rt.loading.fused_weights import fuse_for_engine
from bitdance_rt.platform import triton_interpreter_on
from bitdance_rt.quantization.formats import RUNTIME_ACT_QUANT, check_quantization
from bitdance_rt.quantization.modules import quantizable_linears, quantize_linears
from bitdance_rt.reference.qwen3 import Qwen3Backbone
from bitdance_rt.families import Family, family_of
from bitdance_rt.loading.c2i_checkpoint import load_c2i
from bitdance_rt.loading.t2i_checkpoint import load_t2i
from bitdance_rt.request import ImageRequest, resolve_request
from bitdance_rt.runtime import Runtime
from bitdance_rt.sizes import token_grid
from bitdance_rt.tiny_models import write_tiny_c2i, write_tiny_t2i

STAGES = ("prefill", "backbone", "head", "decode", "other")
FLOOR_STAGES = ("prefill", "backbone", "head")
BACKENDS = ("reference", "triton", "cuda")
ENGINE_BACKENDS = ("cuda", "triton")  # the targets judge the first of these that ran
DEFAULT_PROMPT = "A red fox resting in a snowy birch forest at dawn, soft golden light, detailed fur"
DECODE_PIXELS = 4 << 20  # pixels per token-decoder call (4 images of 1024x1024, 64 of 256x256)
DEFAULT_BATCHES = {"t2i": (1, 8), "c2i": (256,)}  # by family key
TINY_BATCHES = (1,)
TINY_SIZES = {"t2i": (512, 512)}  # tiny text-to-image models run at 512x512; the rest at their default size
TINY_NAME = re.compile(r"tiny-(t2i|c2i)-(\d+)x")
GIB = 1 << 30


@dataclass(frozen=True)
class Request:
    height: int
    width: int
    batch: int
    steps: int
    guidance: float
    seed: int
    prompt: str

    def labels(self) -> list[int]:
        return [(7 + 97 * i) % 1000 for i in range(self.batch)]


@dataclass(frozen=True)
class Target:
    """A target of issue 4: ``metric`` of the engine on ``model`` at ``batch`` and ``settings`` (height, width,
    steps, guidance) must be at least (``at_least``) or at most ``bound``."""
    model: str
    batch: int
    settings: tuple[int, int, int, float]
    metric: str
    bound: float
    at_least: bool


TARGETS = (
    Target("14B-64x", 1, (1024, 1024, 50, 7.5), "speedup", 3.0, True),
    Target("14B-64x", 1, (1024, 1024, 50, 7.5), "weight_floor", 1.5, False),
    Target("14B-64x", 8, (1024, 1024, 50, 7.5), "compute_floor", 1.5, False),
    Target("B-16x", 256, (256, 256, 100, 6.1), "images_per_s", 150.0, True),
)
THROUGHPUT_TARGETS = (  # issue 13 (batch throughput), judged with --throughput in place of the above
    Target("B-16x", 256, (256, 256, 100, 6.1), "images_per_s", 120.0, True),
    Target("B-4x", 256, (256, 256, 100, 3.9), "images_per_s", 48.0, True),
    Target("B-1x", 256, (256, 256, 100, 3.2), "images_per_s", 22.0, True),
    Target("14B-64x", 8, (1024, 1024, 50, 7.5), "compute_floor", 1.4, False),
    Target("14B-64x", 1, (1024, 1024, 50, 7.5), "weight_floor", 1.25, False),
)
# --throughput (issue 13): the batch sizes of each model, run by the engine only
THROUGHPUT_BATCHES = {"14B-64x": (1, 8, 16), "B-1x": (64, 256), "B-4x": (64, 256), "B-16x": (64, 256)}
METRIC_TEXT = {"speedup": "x faster than reference", "weight_floor": "x weight-streaming floor",
               "compute_floor": "x compute floor", "images_per_s": " images/s",
               "images_per_s_tokens": " images/s without the decoder"}
BOUND_UNIT = {"speedup": "x", "weight_floor": "x", "compute_floor": "x", "images_per_s": " images/s",
              "images_per_s_tokens": " images/s"}


# ----------------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------------

class StageClock:
    """Splits a run's time into named stages: ``enter(stage)`` ends the running stage and starts ``stage`` (nothing
    happens when it is already running), ``stop()`` ends the last and returns seconds per stage. On CUDA each
    switch synchronises the device and records an event, so a stage's time is the device time between its
    switches; on the CPU it is wall time."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._marks: list[tuple[str | None, object]] = []

    def _mark(self) -> object:
        if not self.cuda:
            return time.perf_counter()
        torch.cuda.synchronize()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def enter(self, stage: str | None) -> None:
        if not self._marks or self._marks[-1][0] != stage:
            self._marks.append((stage, self._mark()))

    def seen(self, stage: str) -> bool:
        return any(s == stage for s, _ in self._marks)

    def stop(self) -> dict[str, float]:
        self.enter(None)
        if self.cuda:
            torch.cuda.synchronize()
        seconds: dict[str, float] = {}
        for (stage, start), (_, end) in zip(self._marks, self._marks[1:]):
            elapsed = start.elapsed_time(end) / 1e3 if self.cuda else end - start
            seconds[stage] = seconds.get(stage, 0.0) + elapsed
        return seconds


class TimedStep:
    """An engine ``AutoregressiveStep`` whose ``head`` and ``decode`` calls switch the clock's stage."""

    def __init__(self, step, clock: StageClock):
        self._step, self._clock = step, clock

    def head(self, *args, **kwargs) -> torch.Tensor:
        self._clock.enter("head")
        return self._step.head(*args, **kwargs)

    def decode(self) -> None:
        self._clock.enter("backbone")
        self._step.decode()

    def __getattr__(self, name: str):
        return getattr(self._step, name)


@contextlib.contextmanager
def engine_stages(engine, clock: StageClock):
    """Wrap the engine's ``prefill``, ``ar_step`` (its AR step) and, for class-conditional models, the eager step-0
    sampler as instance attributes, removed on exit. Graph replays run inside the wrapped calls."""
    originals = {name: getattr(engine, name) for name in ("prefill", "ar_step")}  # both engines have these
    if hasattr(engine, "unguided_rows"):
        originals["unguided_rows"] = engine.unguided_rows

    def prefill(*args, **kwargs):
        clock.enter("prefill")
        return originals["prefill"](*args, **kwargs)

    def step(*args, **kwargs):
        return TimedStep(originals["ar_step"](*args, **kwargs), clock)

    def unguided(*args, **kwargs):
        clock.enter("head")
        return originals["unguided_rows"](*args, **kwargs)

    wrappers = {"prefill": prefill, "ar_step": step, "unguided_rows": unguided}
    for name in originals:
        setattr(engine, name, wrappers[name])
    try:
        yield
    finally:
        for name in originals:
            delattr(engine, name)


@contextlib.contextmanager
def reference_stages(family: Family, clock: StageClock):
    """Forward pre-hooks on the reference modules: the backbone (prefill until the head first runs), the head,
    and the token embedder (counted with the backbone step it feeds)."""
    model, feed = family.model, family.token_embedder

    def on_backbone(module, args):
        clock.enter("backbone" if clock.seen("head") else "prefill")

    handles = [model.backbone.register_forward_pre_hook(on_backbone),
               model.head.register_forward_pre_hook(lambda module, args: clock.enter("head")),
               feed.register_forward_pre_hook(lambda module, args: clock.enter("backbone"))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def stage_hooks(runtime: Runtime, clock: StageClock):
    return reference_stages(runtime.family, clock) if runtime.engine is None else engine_stages(runtime.engine, clock)


# ----------------------------------------------------------------------------------------------------------------
# Running one backend
# ----------------------------------------------------------------------------------------------------------------

def generate_tokens(runtime: Runtime, req: Request, steps: int) -> torch.Tensor:
    if runtime.family.condition_field == "prompt":
        condition = {"prompt": req.prompt, "num_images": req.batch}
    else:
        condition = {"class_labels": req.labels()}
    out = runtime.generate(**condition, height=req.height, width=req.width, num_sampling_steps=steps,
                           guidance_scale=req.guidance, seed=req.seed, output_type="tokens")
    return out.tokens


def decode_images(runtime: Runtime, tokens: torch.Tensor, req: Request, chunk: int) -> None:
    for start in range(0, tokens.shape[0], chunk):
        runtime.decode_tokens(tokens[start:start + chunk], req.height, req.width, seed=req.seed, output_type="pt")


def run_backend(runtime: Runtime, req: Request, decode_chunk: int) -> dict:
    device = runtime.device
    cuda = device.type == "cuda"
    warm = generate_tokens(runtime, req, req.steps if runtime.engine is not None else 1)
    decode_images(runtime, warm[:decode_chunk], req, decode_chunk)
    del warm
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    resident = torch.cuda.memory_allocated(device) if cuda else None

    clock = StageClock(device)
    clock.enter("tokens")
    tokens = generate_tokens(runtime, req, req.steps)
    clock.enter("decode")
    decode_images(runtime, tokens, req, decode_chunk)
    total = clock.stop()
    peak = torch.cuda.max_memory_allocated(device) if cuda else None

    clock = StageClock(device)
    with stage_hooks(runtime, clock):
        clock.enter("other")
        again = generate_tokens(runtime, req, req.steps)
    stages = clock.stop()
    stages["decode"] = total["decode"]
    total_s = total["tokens"] + total["decode"]
    return {
        "total_s": total_s, "tokens_s": total["tokens"], "per_image_s": total_s / req.batch,
        "images_per_s": req.batch / total_s,
        "stages_s": {stage: stages.get(stage, 0.0) for stage in STAGES},
        "staged_tokens_s": sum(v for k, v in stages.items() if k != "decode"),
        "peak_gib": peak / GIB if cuda else None, "resident_gib": resident / GIB if cuda else None,
        "repeatable": (again == tokens).double().mean().item(),
    }


# ----------------------------------------------------------------------------------------------------------------
# Floors
# ----------------------------------------------------------------------------------------------------------------

def prefix_lengths(family: Family, req: Request) -> list[int]:
    """Positions each row runs through the prefill (both guidance rows)."""
    condition = {"prompt": req.prompt} if family.condition_field == "prompt" else {"class_label": 0}
    spec = resolve_request(ImageRequest(**condition, height=req.height, width=req.width, num_images=req.batch,
                                        num_sampling_steps=req.steps, guidance_scale=req.guidance, seed=0), family)
    return family.prefix_lengths(spec)


def stage_work(roles: model_shapes.ParameterRoles, prefixes: list[int], parallel: int, num_ar: int, steps: int,
               element_bytes: int) -> dict[str, dict[str, float]]:
    """Weight bytes read and FLOPs per floor stage of one batch."""
    rows = len(prefixes)
    fed = rows * (num_ar - 1) * parallel
    step_params = roles.backbone + roles.feed
    head_params = roles.head_cond + (steps + 1) * roles.head_pass  # what each head token meets per AR step
    return {
        "prefill": {"bytes": roles.backbone * element_bytes, "flops": 2 * roles.backbone * sum(prefixes)},
        "backbone": {"bytes": (num_ar - 1) * step_params * element_bytes, "flops": 2 * step_params * fed},
        "head": {"bytes": num_ar * head_params * element_bytes, "flops": 2 * head_params * rows * parallel * num_ar},
    }


def floor_table(work: dict[str, dict[str, float]], rates: dict[str, float | None]) -> dict:
    """Bytes and FLOPs per stage, and (when the rates were measured) their seconds per stage and in total."""
    out: dict = {"bytes": {s: w["bytes"] for s, w in work.items()}, "flops": {s: w["flops"] for s, w in work.items()}}
    bandwidth, matmul = rates["copy_bytes_per_s"], rates["matmul_flops_per_s"]
    if bandwidth is None or matmul is None:
        out.update(weight_s=None, compute_s=None, weight_total_s=None, compute_total_s=None)
        return out
    out["weight_s"] = {s: w["bytes"] / bandwidth for s, w in work.items()}
    out["compute_s"] = {s: w["flops"] / matmul for s, w in work.items()}
    out["weight_total_s"] = sum(out["weight_s"].values())
    out["compute_total_s"] = sum(out["compute_s"].values())
    return out


# ----------------------------------------------------------------------------------------------------------------
# Targets and the printed table
# ----------------------------------------------------------------------------------------------------------------

def engine_run(run: dict) -> dict | None:
    """The engine's results the targets judge: the CUDA-kernel engine if it ran, else the Triton one."""
    return next((run["backends"][b] for b in ENGINE_BACKENDS if "total_s" in run["backends"].get(b, {})), None)


def engine_metrics(run: dict) -> dict[str, float]:
    engine, reference, fl = engine_run(run), run["backends"].get("reference"), run["floors"]
    metrics: dict[str, float] = {}
    if engine is None:
        return metrics
    if reference is not None and "total_s" in reference:
        metrics["speedup"] = reference["total_s"] / engine["total_s"]
    if fl["weight_total_s"]:
        metrics["weight_floor"] = engine["total_s"] / fl["weight_total_s"]
        metrics["compute_floor"] = engine["total_s"] / fl["compute_total_s"]
    metrics["images_per_s"] = engine["images_per_s"]
    if engine.get("tokens_s"):
        metrics["images_per_s_tokens"] = run["batch"] / engine["tokens_s"]
    return metrics


def largest_excess(run: dict) -> str:
    """Why the engine misses: the stage furthest above its floor, and the decoder's share (it has no floor)."""
    engine, fl, batch = engine_run(run), run["floors"], run["batch"]
    stage_floor = {s: max(fl["weight_s"][s], fl["compute_s"][s]) for s in FLOOR_STAGES}
    worst = max(FLOOR_STAGES, key=lambda s: engine["stages_s"][s] - stage_floor[s])
    measured = engine["stages_s"][worst]
    return (f"{worst} takes {measured / batch:.3f} s/image, {measured / stage_floor[worst]:.2f}x its floor "
            f"{stage_floor[worst] / batch:.3f} s; decode {engine['stages_s']['decode'] / batch:.3f} s/image has no "
            "floor")


def verdicts(run: dict, name: str, targets: tuple[Target, ...] = TARGETS) -> list[dict]:
    metrics = engine_metrics(run)
    settings = (run["height"], run["width"], run["steps"], run["guidance"])
    out = []
    for t in targets:
        if (t.model, t.batch, t.settings) != (name, run["batch"], settings) or t.metric not in metrics:
            continue
        value = metrics[t.metric]
        met = value >= t.bound if t.at_least else value <= t.bound
        text = (f"{value:.2f}{METRIC_TEXT[t.metric]} (target {'>=' if t.at_least else '<='} "
                f"{t.bound:g}{BOUND_UNIT[t.metric]}: ")
        if met:
            text += "met)"
        else:
            short = t.bound / value - 1 if t.at_least else value / t.bound - 1
            why = f": {largest_excess(run)}" if run["floors"]["weight_s"] else ""
            text += f"MISSED by {100 * short:.0f}%{why})"
        out.append({**asdict(t), "value": value, "met": met, "text": text})
    return out


def summary_line(run: dict) -> str:
    """Every engine metric, with the matching targets' verdicts in place of the plain value."""
    targeted = {v["metric"]: v["text"] for v in run["targets"]}
    parts = [targeted.get(m, f"{v:.2f}{METRIC_TEXT[m]}") for m, v in engine_metrics(run).items()]
    return f"batch {run['batch']}: " + ("; ".join(parts) if parts else "no engine run")


def _cells(values: list[float | None], width: int = 10) -> str:
    return "".join(f"{'-' if v is None else f'{v:.4g}':>{width}}" for v in values)


def print_run(name: str, run: dict, device_text: str) -> None:
    b = run["batch"]
    weights = f"{run['quantization'] or 'float'} weights {run['weights_gib']:.2f} GiB" + (
        f", capped at {run['memory_cap_gib']:g} GiB" if run["memory_cap_gib"] is not None else "")
    print(f"\n== {name}  {run['height']}x{run['width']}  batch {b}  {run['steps']} steps  guidance "
          f"{run['guidance']:g}  {run['ar_steps']} AR steps of P={run['parallel']}  ({device_text}; {weights}) ==")
    print(f"{'':14}{'total s':>10} | per image s:{'total':>10}" + "".join(f"{s:>10}" for s in STAGES)
          + f" | {'peak GiB':>8}")
    for backend, r in run["backends"].items():
        if "out_of_memory" in r:
            print(f"{backend:14} out of memory under the {run['memory_cap_gib']:g} GiB cap")
            continue
        per_image = [r["per_image_s"]] + [r["stages_s"][s] / b for s in STAGES]
        peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}"
        print(f"{backend:14}{_cells([r['total_s']])} |{'':13}{_cells(per_image)} | {peak:>8}")
    fl = run["floors"]
    for kind, label in (("weight", "weight floor"), ("compute", "compute floor")):
        if fl[f"{kind}_s"] is None:
            continue
        per_stage = [fl[f"{kind}_s"].get(s) for s in STAGES]
        per_image = [fl[f"{kind}_total_s"] / b] + [None if v is None else v / b for v in per_stage]
        print(f"{label:14}{_cells([fl[f'{kind}_total_s']])} |{'':13}{_cells(per_image)} |")
    if fl["weight_s"] is None:
        print(f"floors: n/a without a CUDA device (weight bytes {sum(fl['bytes'].values()):.3g}, "
              f"FLOPs {sum(fl['flops'].values()):.3g})")
    print(summary_line(run))


# ----------------------------------------------------------------------------------------------------------------
# Models, settings, main
# ----------------------------------------------------------------------------------------------------------------

def quantize_in_place(model, fmt: str) -> None:
    """The built model's backbone and head linears to ``fmt`` (the runtime's rule: ``loading/quantized_load.py``),
    then fused again, so it holds what ``Runtime.from_pretrained(quantization=fmt)`` would."""
    for part in (model.backbone, model.head):
        quantize_linears(part, quantizable_linears(part), fmt, act_quant=RUNTIME_ACT_QUANT[fmt])
    fuse_for_engine(model.backbone if isinstance(model.backbone, Qwen3Backbone) else None, model.head)


def tiny_model(name: str, root: Path, quantization: str | None = None) -> Family:
    """A tiny model (``tiny-t2i-<P>x`` or ``tiny-c2i-<P>x``) written by ``bitdance_rt.tiny_models`` under ``root``
    and loaded on the CPU in float32."""
    match = TINY_NAME.fullmatch(name)
    kind, parallel = match.group(1), int(match.group(2))
    cpu = torch.device("cpu")
    if kind == "t2i":
        return family_of(load_t2i(write_tiny_t2i(root / name, parallel_num=parallel), cpu, torch.float32,
                                  quantization))
    model_path, ae_path = write_tiny_c2i(root / name, parallel_num=parallel)
    return family_of(load_c2i(model_path, ae_path, cpu, torch.float32, quantization=quantization))


def requests_for(family: Family, args: argparse.Namespace) -> list[Request]:
    size = args.size or (TINY_SIZES.get(family.key) if args.tiny else None) or family.default_size
    batches = args.batch or (TINY_BATCHES if args.tiny else
                             THROUGHPUT_BATCHES.get(args.current_model) if args.throughput else None) \
        or DEFAULT_BATCHES[family.key]
    guidance = family.default_guidance if args.guidance is None else args.guidance
    return [Request(size[0], size[1], b, args.steps or family.default_steps, guidance, args.seed, args.prompt)
            for b in batches]


def run_model(name: str, model, args: argparse.Namespace, device: torch.device,
              dtype: torch.dtype, rates: dict, roles: model_shapes.ParameterRoles | None = None) -> list[dict]:
    """Every batch size of one model on every backend: runs, floors and targets, printed and returned. ``roles``:
    the parameters by role, counted before quantizing (a quantized linear has no parameters; default: counted
    now)."""
    family = family_of(model)
    if roles is None:
        roles = model_shapes.parameter_roles(model_shapes.model_parts(model))
    element_bytes = 1 if args.quantization else torch.finfo(dtype).bits // 8
    runs = []
    args.current_model = name
    for req in requests_for(family, args):
        grid = token_grid(req.height, req.width, family.downsample, family.parallel)
        num_ar = grid[0] * grid[1] // family.parallel
        work = stage_work(roles, prefix_lengths(family, req), family.parallel, num_ar, req.steps, element_bytes)
        chunk = args.decode_chunk or max(1, DECODE_PIXELS // (req.height * req.width))
        run = {"model": name, **asdict(req), "parallel": family.parallel, "ar_steps": num_ar, "decode_chunk": chunk,
               "quantization": args.quantization, "memory_cap_gib": args.memory_cap_gib,
               "weights_gib": family.weights_bytes() / GIB,
               "parameters": asdict(roles), "floors": floor_table(work, rates), "backends": {}}
        for backend in args.backends:
            runtime = Runtime(family, device, dtype, backend)
            try:
                run["backends"][backend] = run_backend(runtime, req, chunk)
            except torch.cuda.OutOfMemoryError as e:
                if args.memory_cap_gib is None:
                    raise
                run["backends"][backend] = {"out_of_memory": str(e).splitlines()[0]}
                print(f"{backend}: out of memory under the {args.memory_cap_gib:g} GiB cap")
            del runtime
            release_memory(device)
        run["targets"] = verdicts(run, name, THROUGHPUT_TARGETS if args.throughput else TARGETS)
        print_run(name, run, f"{str(dtype).removeprefix('torch.')}, {device_name(device)}")
        runs.append(run)
    return runs


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def cpu_environment() -> dict[str, str]:
    import triton

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"gpu": "none (CPU, --tiny)", "driver": "none", "torch": torch.__version__, "triton": triton.__version__,
            "commit": commit}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", help=f"comma-separated; released: {','.join(model_shapes.RELEASED)} (default all); "
                                    "with --tiny: tiny-t2i-<P>x, tiny-c2i-<P>x (default tiny-t2i-64x,tiny-c2i-16x)")
    p.add_argument("--batch", help="comma-separated batch sizes (images; default T2I 1,8, ImageNet 256, --tiny 1)")
    p.add_argument("--steps", type=int, help="sampling steps (default: T2I 50, ImageNet 100)")
    p.add_argument("--guidance", type=float, help="guidance scale (default: T2I 7.5, ImageNet the release's flag)")
    p.add_argument("--size", help="T2I image size HxW (default 1024x1024, --tiny 512x512)")
    p.add_argument("--backends", default=None, help="comma-separated from reference,triton,cuda (default both; with "
                                                    "--tiny: reference, plus triton when TRITON_INTERPRET=1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--decode-chunk", type=int, default=0, help="images per token-decoder call (default: 4 Mpixel)")
    p.add_argument("--out", type=Path, help="JSON path (default bench/results/e2e-<gpu>-<commit>.json)")
    p.add_argument("--tiny", action="store_true", help="the tiny models on the CPU (checks the script's plumbing)")
    p.add_argument("--quantization", choices=["fp8", "int8"], help="8-bit backbone and head linears (issue 12)")
    p.add_argument("--memory-cap-gib", type=float, help="cap the process at this many GiB once the model is built "
                                                        "(torch.cuda.set_per_process_memory_fraction), e.g. 24")
    p.add_argument("--throughput", action="store_true",
                   help="issue 13's batch runs in one command: 14B-64x at batch 1, 8, 16 and B-1x/B-4x/B-16x at 64 "
                        "and 256, the engine only (images/s with and without the decoder, floors, targets)")
    args = p.parse_args(argv)
    args.current_model = None
    if args.throughput and not args.tiny:
        args.models = args.models or ",".join(THROUGHPUT_BATCHES)
        args.backends = args.backends or "triton"  # the engine; --backends cuda for the CUDA-kernel chain
    if args.memory_cap_gib is not None and (args.tiny or not args.memory_cap_gib > 0):
        p.error("--memory-cap-gib takes a positive number of GiB and needs a CUDA device (not --tiny)")
    if args.quantization and not args.tiny:
        check_quantization(args.quantization, torch.device("cuda", torch.cuda.current_device()))
    if not args.tiny and not torch.cuda.is_available():
        p.error("no CUDA device: the released shapes need a GPU; run with --tiny to check the plumbing on the CPU")
    args.models = (args.models.split(",") if args.models
                   else ["tiny-t2i-64x", "tiny-c2i-16x"] if args.tiny else list(model_shapes.RELEASED))
    known = (lambda m: TINY_NAME.fullmatch(m) is not None) if args.tiny else (lambda m: m in model_shapes.RELEASED)
    unknown = [m for m in args.models if not known(m)]
    if unknown:
        choices = "tiny-t2i-<P>x, tiny-c2i-<P>x" if args.tiny else ", ".join(model_shapes.RELEASED)
        p.error(f"unknown model(s) {unknown}; choose from {choices}")
    args.batch = [int(b) for b in args.batch.split(",")] if args.batch else None
    args.size = tuple(int(s) for s in args.size.lower().split("x")) if args.size else None
    default_backends = ["reference", "triton"] if not args.tiny or triton_interpreter_on() else ["reference"]
    args.backends = args.backends.split(",") if args.backends else default_backends
    if any(b not in BACKENDS for b in args.backends):
        p.error(f"--backends takes {', '.join(BACKENDS)}, got {args.backends}")
    if args.tiny and "triton" in args.backends and not triton_interpreter_on():
        p.error("the engine on the CPU runs only through Triton's interpreter: set TRITON_INTERPRET=1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.tiny:
        device, dtype = torch.device("cpu"), torch.float32
        torch.set_num_threads(1)  # tiny tensors: a second intra-op thread only adds barrier waits on a busy machine
        environment = cpu_environment()
        rates = {"copy_bytes_per_s": None, "matmul_flops_per_s": None}
    else:
        device, dtype = torch.device("cuda", torch.cuda.current_device()), torch.bfloat16
        environment = floors.environment()
        rates = {"copy_bytes_per_s": floors.copy_bandwidth(), "matmul_flops_per_s": floors.matmul_rate()}
        print(f"{environment['gpu']}: copy {rates['copy_bytes_per_s'] / 1e12:.2f} TB/s, bf16 matmul "
              f"{rates['matmul_flops_per_s'] / 1e12:.0f} TFLOP/s")
    runs = []
    with tempfile.TemporaryDirectory() as tiny_root, torch.no_grad():
        for name in args.models:
            if args.tiny:
                roles = model_shapes.parameter_roles(model_shapes.model_parts(tiny_model(name, Path(tiny_root))))
                model = tiny_model(name, Path(tiny_root), args.quantization)
            else:
                model = model_shapes.build_model(model_shapes.RELEASED[name], device, dtype, args.seed)
                roles = model_shapes.parameter_roles(model_shapes.model_parts(model))
                if args.quantization:
                    quantize_in_place(model, args.quantization)
                    release_memory(device)
                if args.memory_cap_gib is not None:
                    total = torch.cuda.get_device_properties(device).total_memory
                    torch.cuda.set_per_process_memory_fraction(min(1.0, args.memory_cap_gib * GIB / total), device)
            runs += run_model(name, model, args, device, dtype, rates, roles)
            del model
            release_memory(device)
    gpu = re.sub(r"[^a-z0-9]+", "-", environment["gpu"].lower()).strip("-")
    out = args.out or Path(__file__).parent / "results" / f"e2e-{'cpu-tiny' if args.tiny else gpu}-" \
                                                          f"{args.quantization or 'bf16'}-{environment['commit']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"environment": environment, "tiny": args.tiny, "dtype": str(dtype).removeprefix("torch."),
                               "rates": rates, "runs": runs}, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
