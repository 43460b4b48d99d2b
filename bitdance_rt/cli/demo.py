"""``bitdance-rt demo``: generate a grid of digits 0-9 with the small trained model shipped in the package, on the
CPU in seconds (``--tiny-random``: the old demo, a tiny random-weight text-to-image model whose image is noise)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

NAME = "demo"
HELP = "generate digits 0-9 with the small trained model shipped in the package (CPU, seconds)"


def add_arguments(m: argparse.ArgumentParser) -> None:
    m.add_argument("--out", default="demo_output", help="folder for demo.png")
    m.add_argument("--samples", type=int, default=8, help="images per digit (one column each)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--steps", type=int, help="sampling steps per AR step (default: the trained run's setting; "
                                             "with --tiny-random: 4)")
    m.add_argument("--guidance", type=float, help="guidance scale (default: the trained run's setting)")
    m.add_argument("--backend", default="reference", help="reference (default) or triton")
    m.add_argument("--threads", type=int, default=1,
                   help="torch threads for the digits model (default 1: its tensors are tiny, and on a busy 2-core "
                        "machine a second thread made the demo 15x slower)")
    m.add_argument("--tiny-random", action="store_true",
                   help="instead: write a tiny random-weight text-to-image model and generate from it (noise)")
    m.add_argument("--prompt", default="a red fox in the snow", help="the prompt of --tiny-random")


def run(a: argparse.Namespace) -> int:
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    return _tiny_random(a, out_dir) if a.tiny_random else _digits(a, out_dir)


def _digits(a: argparse.Namespace, out_dir: Path) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from ..digits.assets import load_record, load_runtime
    from ..digits.grid import image_grid
    from ..request import check_int

    samples = check_int("--samples", a.samples, 1)
    torch.set_num_threads(check_int("--threads", a.threads, 1))
    sampling = load_record()["sampling"]
    steps = sampling["num_sampling_steps"] if a.steps is None else a.steps
    guidance = sampling["guidance_scale"] if a.guidance is None else a.guidance
    start = time.perf_counter()
    rt = load_runtime(backend=a.backend)
    result = rt.generate(class_labels=list(range(10)), num_images=samples, num_sampling_steps=steps,
                         guidance_scale=guidance, seed=a.seed, output_type="np", progress=True)
    image = out_dir / "demo.png"
    Image.fromarray(image_grid(np.asarray(result.images), rows=10)).save(image)
    print(f"wrote {image.resolve()}: digits 0-9 (one row each), {samples} samples per digit, "
          f"{result.width}x{result.height} pixels each, in {time.perf_counter() - start:.1f} s")
    print("Model: a small class-conditional BitDance trained on scikit-learn's 8x8 digits "
          "(bitdance_rt/assets/digits; retrain with tools/train_digits.py).")
    return 0


def _tiny_random(a: argparse.Namespace, out_dir: Path) -> int:
    from ..runtime import Runtime
    from ..tiny_models import write_tiny_t2i

    model_dir = write_tiny_t2i(out_dir / "tiny-t2i", parallel_num=64, seed=0)
    start = time.perf_counter()
    rt = Runtime.from_pretrained(model_dir, device="cpu")
    result = rt.generate(a.prompt, height=512, width=512, num_sampling_steps=4 if a.steps is None else a.steps,
                         guidance_scale=7.5 if a.guidance is None else a.guidance, seed=a.seed, progress=True)
    image = out_dir / "demo.png"
    result.images[0].save(image)
    print(f"wrote {image.resolve()} ({result.width}x{result.height}) in {time.perf_counter() - start:.1f} s")
    print("This tiny model has random weights, so the image is noise; point Runtime.from_pretrained at "
          "downloaded BitDance weights (bitdance-rt download BitDance-14B-64x) for real images.")
    return 0
