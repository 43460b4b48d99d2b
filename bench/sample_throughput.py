"""Throughput of ``bitdance-rt sample`` (``bitdance_rt.sampling.sample``): images per second of a class-conditional
bulk run on one GPU, the number that decides how long a 50,000-image ImageNet FID takes, on a random-weight model of
a released shape (default B-16x).

Run from the repository root on a CUDA GPU::

    python bench/sample_throughput.py [--model B-16x] [--num-samples 2048] [--batch-size 256] [--steps 100]
                                      [--guidance G] [--backend cuda|triton] [--out bench/results/...json]
    python bench/sample_throughput.py --tiny   # the tiny class-conditional model on the CPU: the plumbing only

The model is built in memory (``model_shapes.build_model``: bf16, random weights drawn on the GPU; ``--tiny``: the
tiny P = 16 checkpoint written to a temporary folder, float32 on the CPU, reference backend). One runtime with
``max_batch`` = 2 x batch size rows (guided) serves two runs of ``sample`` into temporary folders:
1. warm-up: one batch of images (Triton compiles, CUDA graphs are captured for the batch);
2. timed: ``--num-samples`` images, balanced labels, the same settings.
Reported: the run's images/s as ``sample`` measures it (from the first request to the last image on disk: AR
steps, per-image decoding, PNG writing), the wall time of the whole call (plus reading the PNGs back into
``samples.npz``), and the hours 50,000 images would take at that rate. JSON: the environment (GPU, torch, commit),
the settings and the results.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bitdance_rt.runtime import Runtime
from bitdance_rt.sampling import SampleSettings, sample
from bitdance_rt.tiny_models import write_tiny_c2i

FID_SAMPLES = 50_000
TINY = {"model": "tiny-c2i-16x", "num_samples": 4, "batch_size": 2, "steps": 2}


def environment(device: torch.device) -> dict[str, str]:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none (CPU, --tiny)"
    return {"gpu": gpu, "torch": torch.__version__, "commit": commit}


def build_runtime(args: argparse.Namespace, tmp: Path) -> Runtime:
    max_batch = args.batch_size * (2 if args.guidance is None or args.guidance > 1.0 else 1)
    if args.tiny:
        model, tokenizer = write_tiny_c2i(tmp / "tiny_c2i", parallel_num=16)
        return Runtime.from_pretrained(model, tokenizer_path=tokenizer, device="cpu", dtype=torch.float32,
                                       max_batch=max_batch)
    sys.path.insert(0, str(Path(__file__).parent))
    import model_shapes

    shape = model_shapes.RELEASED[args.model]
    if shape.family != "c2i":
        raise SystemExit(f"--model {args.model}: this benchmark samples class-conditional shapes (B/L/H).")
    device = torch.device("cuda", torch.cuda.current_device())
    model = model_shapes.build_model(shape, device, torch.bfloat16, args.seed)
    return Runtime(model, device, torch.bfloat16, args.backend, max_batch=max_batch)


def run_once(runtime: Runtime, out: Path, num_samples: int, args: argparse.Namespace) -> dict:
    settings = SampleSettings(out=out, num_samples=num_samples, batch_size=args.batch_size,
                              num_sampling_steps=args.steps, guidance_scale=args.guidance, seed=args.seed,
                              progress=not args.quiet)
    start = time.perf_counter()
    summary = sample(settings, runtime=runtime)
    wall = time.perf_counter() - start
    return {"num_images": summary.num_images, "sampling_s": summary.seconds,
            "images_per_s": summary.images_per_second, "wall_s": wall}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="B-16x", help="a released class-conditional shape (B-1x ... H-16x)")
    p.add_argument("--num-samples", type=int, help="images of the timed run (default 2048; --tiny 4)")
    p.add_argument("--batch-size", type=int, help="images per continuous batch (default 256; --tiny 2)")
    p.add_argument("--steps", type=int, help="sampling steps (default 100, the release's; --tiny 2)")
    p.add_argument("--guidance", type=float, help="guidance scale (default: the shape's release value)")
    p.add_argument("--backend", help="cuda or triton (default: cuda when the extension builds); --tiny: reference")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="JSON path (default bench/results/sample-<gpu>-<model>-<commit>.json)")
    p.add_argument("--tiny", action="store_true", help="the tiny class-conditional model on the CPU")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        p.error("no CUDA device: the released shapes need a GPU; run with --tiny to check the plumbing on the CPU")
    if args.tiny:
        args.model = TINY["model"]
    args.num_samples = args.num_samples or (TINY["num_samples"] if args.tiny else 2048)
    args.batch_size = args.batch_size or (TINY["batch_size"] if args.tiny else 256)
    args.steps = args.steps or (TINY["steps"] if args.tiny else 100)
    if args.backend is None:
        from bitdance_rt.platform import resolve_backend

        args.backend = "reference" if args.tiny else resolve_backend("auto", torch.device("cuda"))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.tiny:
        torch.set_num_threads(1)  # tiny tensors: a second intra-op thread only adds barrier waits
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        tmp = Path(tmp)
        runtime = build_runtime(args, tmp)
        env = environment(runtime.device)
        warm = run_once(runtime, tmp / "warmup", args.batch_size, args)
        timed = run_once(runtime, tmp / "timed", args.num_samples, args)
        guidance = runtime.describe()["defaults"]["guidance_scale"] if args.guidance is None else args.guidance
    timed["hours_for_50k"] = FID_SAMPLES / timed["images_per_s"] / 3600
    settings = {"model": args.model, "num_samples": args.num_samples, "batch_size": args.batch_size,
                "steps": args.steps, "guidance": guidance, "backend": args.backend,
                "dtype": "float32" if args.tiny else "bfloat16", "tiny": args.tiny}
    print(f"{args.model}: {timed['images_per_s']:.2f} images/s over {args.num_samples} images (batch "
          f"{args.batch_size}, {args.steps} steps, {args.backend}); 50,000 images: {timed['hours_for_50k']:.2f} h "
          f"on this GPU; warm-up {warm['wall_s']:.1f} s")
    gpu = re.sub(r"[^a-z0-9]+", "-", env["gpu"].lower()).strip("-") if not args.tiny else "cpu-tiny"
    out = args.out or Path(__file__).parent / "results" / f"sample-{gpu}-{args.model}-{env['commit']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"environment": env, "settings": settings, "warmup": warm, "timed": timed}, indent=2)
                   + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
