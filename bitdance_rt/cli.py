"""``bitdance-rt`` command line: ``generate``, ``info``, ``download``, ``demo`` and ``serve``.

Errors of the runtime (bad files, bad arguments, missing devices) print one line to stderr and exit with 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from .errors import BitDanceError

HUB_MODELS = {
    "BitDance-14B-64x": "shallowdream204/BitDance-14B-64x",
    "BitDance-14B-16x": "shallowdream204/BitDance-14B-16x",
    "BitDance-ImageNet": "shallowdream204/BitDance-ImageNet",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bitdance-rt", description="Run BitDance image generators.")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate images from a prompt (text-to-image) or a class id")
    g.add_argument("model", help="text-to-image model directory or class-conditional checkpoint (.pt)")
    g.add_argument("prompt", nargs="?", help="the text prompt (text-to-image models)")
    g.add_argument("--class", dest="class_label", type=int, action="append",
                   help="ImageNet class id 0..999 (class-conditional models); repeat for several")
    g.add_argument("--tokenizer", help="class-conditional tokenizer file (ae_d16c32.pt)")
    g.add_argument("--negative-prompt")
    g.add_argument("--height", type=int)
    g.add_argument("--width", type=int)
    g.add_argument("--steps", type=int, help="sampling steps of the diffusion head per AR step")
    g.add_argument("--guidance", type=float, help="classifier-free guidance scale (<= 1 disables it)")
    g.add_argument("--seed", type=int)
    g.add_argument("--num-images", type=int, default=1)
    g.add_argument("--device")
    g.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    g.add_argument("--out", default="bitdance.png", help="output PNG; several images get _0, _1, ... suffixes")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar over AR steps")
    g.add_argument("--trust-pickle", action="store_true",
                   help="allow class-conditional files that need full pickle loading (runs code from the file)")

    i = sub.add_parser("info", help="family, sizes, parameter counts and dtypes of a checkpoint (reads no weights)")
    i.add_argument("model")
    i.add_argument("--tokenizer")
    i.add_argument("--trust-pickle", action="store_true")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.add_argument("--device", help="device whose kernel choice to report (default: cuda if present, else cpu)")
    i.add_argument("--backend", default="auto", help="backend whose kernel choice to report (default: auto)")

    d = sub.add_parser("download", help="download released weights from the Hugging Face Hub")
    d.add_argument("name", choices=sorted(HUB_MODELS))
    d.add_argument("--dir", default="models", help="parent folder (default: ./models)")

    m = sub.add_parser("demo", help="write a tiny random-weight model and generate a PNG from it on the CPU")
    m.add_argument("--out", default="demo_output", help="folder for the tiny model and the image")
    m.add_argument("--prompt", default="a red fox in the snow")
    m.add_argument("--steps", type=int, default=4)

    s = sub.add_parser("serve", help="serve a model over HTTP: OpenAI-style images API, progress events, web page")
    s.add_argument("model", nargs="?", help="text-to-image model directory or class-conditional checkpoint (.pt)")
    s.add_argument("--tiny", action="store_true",
                   help="write a tiny random-weight text-to-image model and serve it on the CPU (a quick look)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    s.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    s.add_argument("--tokenizer", help="class-conditional tokenizer file (ae_d16c32.pt)")
    s.add_argument("--device")
    s.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    s.add_argument("--backend", default="auto", help="auto (default), reference, triton or cuda")
    s.add_argument("--trust-pickle", action="store_true")
    s.add_argument("--max-batch", type=int,
                   help="rows per continuous batch (an image is 2 rows when guided; default: the runtime's)")
    s.add_argument("--memory-budget", help="bytes the serving batches may use, e.g. 20GiB (default: no limit)")
    s.add_argument("--max-images", type=int, default=4, help="most images per request (n), default 4")
    s.add_argument("--max-queue", type=int, default=64,
                   help="most requests queued or running; more are refused with 503 (default 64)")
    s.add_argument("--preview-every", type=int,
                   help="AR steps between previews in progress streams (0: none; default: about 8 per request)")
    s.add_argument("--default-size", help="WIDTHxHEIGHT for requests without a size (default: the model's)")
    s.add_argument("--drain-timeout", type=float, default=60.0,
                   help="on SIGINT/SIGTERM, seconds active requests may take to finish before they are cancelled "
                        "(0: cancel at once; a second signal cancels at once too)")
    return p


def _save(images, out: Path) -> list[Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out] if len(images) == 1 else [out.with_name(f"{out.stem}_{k}{out.suffix}") for k in range(len(images))]
    for img, path in zip(images, paths):
        img.save(path)
    return paths


def precheck_generate(a: argparse.Namespace) -> None:
    """Argument errors that need no model are reported before a (possibly 14B) model is loaded."""
    from .errors import InvalidRequestError
    from .requests import check_int, check_labels

    if (a.prompt is None) == (a.class_label is None):
        raise InvalidRequestError("give either a prompt (text-to-image models) or --class (class-conditional "
                                  "models), not both and not neither.")
    if a.class_label is not None:
        check_labels(a.class_label)
    for name, value, minimum in (("--steps", a.steps, 1), ("--num-images", a.num_images, 1),
                                 ("--height", a.height, 1), ("--width", a.width, 1), ("--seed", a.seed, 0)):
        if value is not None:
            check_int(name, value, minimum)
    if a.guidance is not None and not math.isfinite(a.guidance):
        raise InvalidRequestError(f"--guidance must be a finite number, got {a.guidance}.")


def cmd_generate(a: argparse.Namespace) -> int:
    from .runtime import Runtime

    precheck_generate(a)
    rt = Runtime.from_pretrained(a.model, device=a.device, dtype=a.dtype, tokenizer_path=a.tokenizer,
                                 trust_pickle=a.trust_pickle)
    start = time.perf_counter()
    out = rt.generate(a.prompt, class_labels=a.class_label, height=a.height, width=a.width,
                      num_sampling_steps=a.steps, guidance_scale=a.guidance, seed=a.seed, num_images=a.num_images,
                      negative_prompt=a.negative_prompt, progress=not a.no_progress)
    for path in _save(out.images, Path(a.out)):
        print(f"wrote {path}")
    print(f"seed {out.seed}, {time.perf_counter() - start:.1f} s")
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    from .loading.inspect import inspect_checkpoint

    info = inspect_checkpoint(a.model, a.tokenizer, a.trust_pickle)
    info["kernels"] = kernel_choice(a.device, a.backend)
    if a.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        print(f"{key:>16}: {value}")
    return 0


def kernel_choice(device: str | None, backend: str) -> dict[str, str]:
    """Which backend ``device`` and ``backend`` resolve to and, for the engine, which provider (CUDA extension,
    Triton, PyTorch) each operation gets and why a provider was skipped — without loading any weights."""
    from .backends import resolve_backend
    from .devices import resolve_device
    from .ops import OpSet

    dev = resolve_device(device)
    chosen = resolve_backend(backend, dev)
    if chosen == "reference":
        return {"device": str(dev), "backend": "reference (the release's loops in PyTorch)"}
    ops = OpSet(dev, chosen)
    by_provider: dict[str, list[str]] = {}
    for name, provider in ops.summary().items():
        by_provider.setdefault(provider, []).append(name)
    out = {"device": str(dev), "backend": chosen}
    out.update({provider: " ".join(names) for provider, names in by_provider.items()})
    out.update({f"{provider} skipped": why for provider, why in ops.skipped.items()})
    return out


def cmd_download(a: argparse.Namespace) -> int:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        print("bitdance-rt download needs huggingface_hub: pip install 'bitdance-rt[hub]'", file=sys.stderr)
        return 2
    target = Path(a.dir) / a.name
    snapshot_download(repo_id=HUB_MODELS[a.name], local_dir=str(target),
                      allow_patterns=["*.json", "*.safetensors", "*.pt", "*.txt", "*.md"])
    print(f"downloaded {HUB_MODELS[a.name]} to {target}")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from .runtime import Runtime
    from .tiny_models import write_tiny_t2i

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


def cmd_serve(a: argparse.Namespace) -> int:
    from .serving.http_cli import serve

    return serve(a)


COMMANDS = {"generate": cmd_generate, "info": cmd_info, "download": cmd_download, "demo": cmd_demo,
            "serve": cmd_serve}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except BitDanceError as e:
        print(f"bitdance-rt {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
