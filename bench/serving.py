"""Serving benchmark: continuous batching (``Runtime.submit`` served by the background worker) against serving the
same requests one by one, for several numbers of concurrent requests, on a random-weight model of a released shape.

Run from the repository root on a CUDA GPU::

    python bench/serving.py [--model 14B-64x] [--concurrency 1,4,16] [--size 1024x1024] [--steps 50]
                            [--guidance 7.5] [--backend cuda|triton] [--max-batch ROWS] [--bucketed]
                            [--out bench/results/serving-<gpu>-<commit>.json]
    python bench/serving.py --tiny   # the tiny text-to-image model on the CPU (the reference backend's engine with
                                     # PyTorch operations), to check the plumbing without a GPU

The model is built in memory (``model_shapes.build_model``: bf16, random weights drawn on the GPU; ``--tiny``: the
tiny P = 64 model written to a temporary directory, float32). For each concurrency c, c text-to-image requests
(distinct prompts and seeds, one image each, ``output_type="tokens"``: the token decoder costs the same in both
modes and ``e2e.py`` times it) are submitted at once to a runtime whose worker serves them:
- ``continuous``: the batch holds all c requests (``max_batch`` = rows of c images, or ``--max-batch``); they join
  in the first round and step together;
- ``one_by_one``: the batch holds one request (rows of one image); the worker serves the queue in order, so
  request i waits for the ones before it, and its latency counts the wait.
Each runtime first runs one request alone to the end (warm-up: Triton compiles, CUDA graphs are captured for the
batch); in continuous mode that request is request 0 again, and ``crowd_equals_alone`` says whether its tokens in
the crowd are bitwise the ones it got alone (same batch shape: they should be with whole-batch steps; with
``--bucketed`` it depends on the GEMM library). Latency: from submit to the request's "done" event (after its tokens
reached the host). Reported per mode: wall time, images/s, latency mean / median / max, the scheduler rounds run and
the wall time per round, and the continuous / one-by-one throughput ratio.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from bitdance_rt.loading.t2i_checkpoint import load_t2i
from bitdance_rt.families.text_to_image import T2I_DEFAULTS
from bitdance_rt.runtime import Runtime
from bitdance_rt.tiny_models import write_tiny_t2i

DEFAULT_PROMPT = "A red fox resting in a snowy birch forest at dawn, soft golden light, detailed fur"
SUBJECTS = ("a lighthouse on a cliff", "two cats on a sofa", "a bowl of ramen", "a city street in the rain",
            "an old map", "a mountain lake", "a robot reading", "a field of sunflowers")
TINY = {"model": "tiny-t2i-64x", "size": (512, 512), "steps": 1, "concurrency": (1, 4)}
RESULT_TIMEOUT_S = 3600.0


def prompt(i: int) -> str:
    return DEFAULT_PROMPT if i == 0 else f"{SUBJECTS[(i - 1) % len(SUBJECTS)]}, study {i}"


def request_args(i: int, args: argparse.Namespace) -> dict:
    return dict(prompt=prompt(i), height=args.size[0], width=args.size[1], num_sampling_steps=args.steps,
                guidance_scale=args.guidance, seed=args.seed + i, output_type="tokens")


def rows_per_image(args: argparse.Namespace) -> int:
    return 2 if args.guidance > 1.0 else 1


def serve(runtime: Runtime, requests: list[dict]) -> dict:
    """Submit every request at once to the running worker; wait for all; latencies from the done events."""
    finished: dict[int, float] = {}
    lock = threading.Lock()
    rounds_before = runtime.stats()["rounds"]
    runtime.start_worker()
    start = time.perf_counter()
    handles = []
    for i, req in enumerate(requests):
        submitted = time.perf_counter()
        h = runtime.submit(**req)

        def on_event(event: dict, i: int = i, submitted: float = submitted) -> None:
            if event["type"] == "done":
                with lock:
                    finished[i] = time.perf_counter() - submitted
        h.add_listener(on_event)
        handles.append(h)
    tokens = [h.result(timeout=RESULT_TIMEOUT_S).tokens for h in handles]
    wall = time.perf_counter() - start
    runtime.stop_worker(timeout=RESULT_TIMEOUT_S)
    latencies = [finished[i] for i in range(len(requests))]
    stats = runtime.stats()
    return {"wall_s": wall, "images_per_s": len(requests) / wall, "latency_s": {
                "mean": statistics.fmean(latencies), "median": statistics.median(latencies), "max": max(latencies),
                "per_request": latencies},
            "rounds": stats["rounds"] - rounds_before, "mean_round_s": wall / (stats["rounds"] - rounds_before),
            "max_batch_rows": stats["max_batch"], "tokens": tokens}


def run_mode(model, args: argparse.Namespace, device: torch.device, dtype: torch.dtype, max_batch: int,
             batches: list[list[dict]]) -> list[dict]:
    """One runtime with ``max_batch`` rows: a warm-up request alone, then each list of requests served at once."""
    runtime = Runtime(model, device, dtype, args.backend, max_batch=max_batch, batch_invariant=not args.bucketed)
    warm = serve(runtime, [request_args(0, args)])
    results = []
    for requests in batches:
        result = serve(runtime, requests)
        result["crowd_equals_alone"] = bool(torch.equal(result["tokens"][0], warm["tokens"][0]))
        results.append(result)
    del runtime
    release_memory(device)
    return results


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def environment(device: torch.device) -> dict[str, str]:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none (CPU, --tiny)"
    return {"gpu": gpu, "torch": torch.__version__, "commit": commit}


def build(args: argparse.Namespace, device: torch.device, dtype: torch.dtype, tmp: Path):
    if args.tiny:
        return load_t2i(write_tiny_t2i(tmp / "tiny_t2i_64x", parallel_num=64), device, dtype)
    sys.path.insert(0, str(Path(__file__).parent))
    import model_shapes

    return model_shapes.build_model(model_shapes.RELEASED[args.model], device, dtype, args.seed)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="14B-64x", help="a released text-to-image shape (14B-64x or 14B-16x)")
    p.add_argument("--concurrency", help="comma-separated numbers of concurrent requests (default 1,4,16; "
                                         "--tiny 1,4)")
    p.add_argument("--size", help="HxW (default 1024x1024; --tiny 512x512)")
    p.add_argument("--steps", type=int, help="sampling steps (default 50; --tiny 1)")
    p.add_argument("--guidance", type=float, default=T2I_DEFAULTS["guidance_scale"])
    p.add_argument("--backend", help="cuda or triton on a GPU (default: cuda when the extension builds); --tiny: "
                                     "reference (its serving engine runs the PyTorch operations)")
    p.add_argument("--max-batch", type=int, help="rows per batch in continuous mode (default: c images' rows)")
    p.add_argument("--bucketed", action="store_true", help="compute a power-of-two prefix of the slots per step "
                                                           "instead of the whole batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="JSON path (default bench/results/serving-<gpu>-<commit>.json)")
    p.add_argument("--tiny", action="store_true", help="the tiny text-to-image model on the CPU")
    args = p.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        p.error("no CUDA device: the released shapes need a GPU; run with --tiny to check the plumbing on the CPU")
    if args.tiny:
        args.model = TINY["model"]
    args.concurrency = [int(c) for c in args.concurrency.split(",")] if args.concurrency else \
        list(TINY["concurrency"] if args.tiny else (1, 4, 16))
    args.size = tuple(int(s) for s in args.size.lower().split("x")) if args.size else \
        (TINY["size"] if args.tiny else (T2I_DEFAULTS["height"], T2I_DEFAULTS["width"]))
    args.steps = args.steps or (TINY["steps"] if args.tiny else T2I_DEFAULTS["num_sampling_steps"])
    if args.backend is None:
        if args.tiny:
            args.backend = "reference"
        else:
            from bitdance_rt.platform import resolve_backend

            args.backend = resolve_backend("auto", torch.device("cuda"))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.tiny:
        device, dtype = torch.device("cpu"), torch.float32
        torch.set_num_threads(1)  # tiny tensors: a second intra-op thread only adds barrier waits on a busy machine
    else:
        device, dtype = torch.device("cuda", torch.cuda.current_device()), torch.bfloat16
    env = environment(device)
    rows = rows_per_image(args)
    runs = []
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        model = build(args, device, dtype, Path(tmp))
        batches = [[request_args(i, args) for i in range(c)] for c in args.concurrency]
        one_by_one = run_mode(model, args, device, dtype, rows, batches)
        for c, requests, single in zip(args.concurrency, batches, one_by_one):
            (continuous,) = run_mode(model, args, device, dtype, args.max_batch or rows * c, [requests])
            single.pop("crowd_equals_alone")  # one request per batch: no crowd
            for r in (continuous, single):
                r.pop("tokens")
            run = {"concurrency": c, "continuous": continuous, "one_by_one": single,
                   "throughput_ratio": continuous["images_per_s"] / single["images_per_s"]}
            runs.append(run)
            print(f"{c:3d} concurrent: continuous {continuous['images_per_s']:.3f} images/s, latency mean "
                  f"{continuous['latency_s']['mean']:.2f} s max {continuous['latency_s']['max']:.2f} s "
                  f"(crowd == alone: {continuous['crowd_equals_alone']}); one by one {single['images_per_s']:.3f} "
                  f"images/s, latency mean {single['latency_s']['mean']:.2f} s max {single['latency_s']['max']:.2f} "
                  f"s; x{run['throughput_ratio']:.2f}")
    settings = {"model": args.model, "height": args.size[0], "width": args.size[1], "steps": args.steps,
                "guidance": args.guidance, "backend": args.backend, "bucketed": args.bucketed,
                "max_batch": args.max_batch, "dtype": str(dtype).removeprefix("torch."), "tiny": args.tiny}
    gpu = re.sub(r"[^a-z0-9]+", "-", env["gpu"].lower()).strip("-") if not args.tiny else "cpu-tiny"
    out = args.out or Path(__file__).parent / "results" / f"serving-{gpu}-{env['commit']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"environment": env, "settings": settings, "runs": runs}, indent=2) + "\n",
                   encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
