"""``bitdance-rt demo``: write a tiny random-weight model and generate a PNG from it on the CPU."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

NAME = "demo"
HELP = "write a tiny random-weight model and generate a PNG from it on the CPU"


def add_arguments(m: argparse.ArgumentParser) -> None:
    m.add_argument("--out", default="demo_output", help="folder for the tiny model and the image")
    m.add_argument("--prompt", default="a red fox in the snow")
    m.add_argument("--steps", type=int, default=4)


def run(a: argparse.Namespace) -> int:
    from ..runtime import Runtime
    from ..tiny_models import write_tiny_t2i

    out_dir = Path(a.out)
    model_dir = write_tiny_t2i(out_dir / "tiny-t2i", parallel_num=64, seed=0)
    start = time.perf_counter()
    rt = Runtime.from_pretrained(model_dir, device="cpu")
    result = rt.generate(a.prompt, height=512, width=512, num_sampling_steps=a.steps, guidance_scale=7.5, seed=0,
                         progress=True)
    image = out_dir / "demo.png"
    result.images[0].save(image)
    print(f"wrote {image.resolve()} ({result.width}x{result.height}) in {time.perf_counter() - start:.1f} s")
    print("This tiny model has random weights, so the image is noise; point Runtime.from_pretrained at "
          "downloaded BitDance weights (bitdance-rt download BitDance-14B-64x) for real images.")
    return 0
