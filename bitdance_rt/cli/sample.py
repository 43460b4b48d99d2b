"""``bitdance-rt sample MODEL --out DIR ...``: bulk sampling for evaluations (``bitdance_rt/sampling``); run it under
``torchrun --nproc-per-node N -m bitdance_rt sample ...`` to share the work among N GPUs. Rerunning the same
command resumes an interrupted run."""

from __future__ import annotations

import argparse

from .model_options import add_model_arguments

NAME = "sample"
HELP = "sample many images for an evaluation (ImageNet FID .npz, GenEval, DPG-Bench), across GPUs with torchrun"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..sampling.settings import DEFAULT_BATCH_SIZE, DEFAULT_TIMEOUT_S

    add_model_arguments(p)
    p.add_argument("--out", required=True, help="output folder (created; rerunning into it resumes the run)")
    c = p.add_argument_group("class-conditional models")
    c.add_argument("--num-samples", type=int, help="images to make (e.g. 50000 for an ImageNet FID)")
    c.add_argument("--labels", default="balanced",
                   help="balanced (default: image i has class i*C//N, the release's protocol), random, or a file of "
                        "one class id a line")
    c.add_argument("--png", action="store_true", help="keep images/{i:06d}.png beside samples.npz")
    t = p.add_argument_group("text-to-image models")
    t.add_argument("--prompts", help="GenEval metadata .jsonl, DPG-Bench prompts (.json or a folder of .txt), or a "
                                     "text file of one prompt a line")
    t.add_argument("--layout", choices=["geneval", "dpg", "plain"],
                   help="output layout (default: from the prompts file: .jsonl geneval, .json or folder dpg, "
                        "else plain)")
    t.add_argument("--images-per-prompt", type=int, help="default 4 for geneval and dpg, 1 for plain")
    t.add_argument("--negative-prompt", help="replaces the unconditional prompt of guidance")
    g = p.add_argument_group("sampling")
    g.add_argument("--height", type=int)
    g.add_argument("--width", type=int)
    g.add_argument("--steps", type=int, help="sampling steps of the diffusion head per AR step (default: the model's)")
    g.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the model's)")
    g.add_argument("--seed", type=int, default=0, help="image i uses seed + i (default 0)")
    g.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help=f"images in each rank's continuous batch (default {DEFAULT_BATCH_SIZE})")
    # --quantization (from add_model_arguments) fills SampleSettings.quantization (recorded in run.json).
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help=f"seconds a rank waits for the others (loading, finishing) before giving up "
                        f"(default {DEFAULT_TIMEOUT_S:g})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or notes on stderr")


def settings_from_args(a: argparse.Namespace):
    from ..sampling import SampleSettings

    return SampleSettings(out=a.out, model=a.model, tokenizer=a.tokenizer, num_samples=a.num_samples,
                          labels=a.labels, png=a.png, prompts=a.prompts, layout=a.layout,
                          images_per_prompt=a.images_per_prompt, negative_prompt=a.negative_prompt, height=a.height,
                          width=a.width, num_sampling_steps=a.steps, guidance_scale=a.guidance, seed=a.seed,
                          batch_size=a.batch_size, device=a.device, dtype=a.dtype, backend=a.backend,
                          quantization=a.quantization,
                          trust_pickle=a.trust_pickle, timeout_s=a.timeout, progress=not a.no_progress)


def run(a: argparse.Namespace) -> int:
    from ..sampling import sample

    summary = sample(settings_from_args(a))
    if summary.rank == 0:
        print(summary.text(), flush=True)
    return 0
