"""``bitdance-rt generate MODEL [PROMPT] [--class N ...]``: images from a prompt or class ids, saved as PNGs."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from .model_options import add_model_arguments, load_runtime

NAME = "generate"
HELP = "generate images from a prompt (text-to-image) or a class id"


def add_arguments(g: argparse.ArgumentParser) -> None:
    add_model_arguments(g)
    g.add_argument("prompt", nargs="?", help="the text prompt (text-to-image models)")
    g.add_argument("--class", dest="class_label", type=int, action="append",
                   help="class id (class-conditional models; ImageNet 0..999); repeat for several")
    g.add_argument("--negative-prompt")
    g.add_argument("--height", type=int)
    g.add_argument("--width", type=int)
    g.add_argument("--steps", type=int, help="sampling steps of the diffusion head per AR step")
    g.add_argument("--guidance", type=float, help="classifier-free guidance scale (<= 1 disables it)")
    g.add_argument("--seed", type=int)
    g.add_argument("--num-images", type=int, default=1)
    g.add_argument("--out", default="bitdance.png", help="output PNG; several images get _0, _1, ... suffixes")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar over AR steps")


def save_images(images, out: Path) -> list[Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out] if len(images) == 1 else [out.with_name(f"{out.stem}_{k}{out.suffix}") for k in range(len(images))]
    for img, path in zip(images, paths):
        img.save(path)
    return paths


def precheck(a: argparse.Namespace) -> None:
    """Argument errors that need no model are reported before a (possibly 14B) model is loaded."""
    from ..errors import InvalidRequestError
    from ..request import check_int

    if (a.prompt is None) == (a.class_label is None):
        raise InvalidRequestError("give either a prompt (text-to-image models) or --class (class-conditional "
                                  "models), not both and not neither.")
    for name, value, minimum in (("--steps", a.steps, 1), ("--num-images", a.num_images, 1),
                                 ("--height", a.height, 1), ("--width", a.width, 1), ("--seed", a.seed, 0)):
        if value is not None:
            check_int(name, value, minimum)
    for i, label in enumerate(a.class_label or []):
        check_int(f"--class (number {i + 1})", label, 0)
    if a.guidance is not None and not math.isfinite(a.guidance):
        raise InvalidRequestError(f"--guidance must be a finite number, got {a.guidance}.")


def run(a: argparse.Namespace) -> int:
    precheck(a)
    rt = load_runtime(a)
    start = time.perf_counter()
    out = rt.generate(a.prompt, class_labels=a.class_label, height=a.height, width=a.width,
                      num_sampling_steps=a.steps, guidance_scale=a.guidance, seed=a.seed, num_images=a.num_images,
                      negative_prompt=a.negative_prompt, progress=not a.no_progress)
    for path in save_images(out.images, Path(a.out)):
        print(f"wrote {path}")
    print(f"seed {out.seed}, {time.perf_counter() - start:.1f} s")
    return 0
