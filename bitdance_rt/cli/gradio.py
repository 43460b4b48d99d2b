"""``bitdance-rt gradio [MODEL | --tiny]``: the Gradio app (``bitdance_rt/frontends/gradio_app.py``) for a model,
served until Ctrl-C. Needs the ``gradio`` extra."""

from __future__ import annotations

import argparse
import signal

from .model_options import add_model_arguments, serving_runtime

NAME = "gradio"
HELP = "serve a model in a Gradio app (the release demo's controls, live previews, shared batches)"
TINY_MAX_BATCH = 4  # a continuous batch computes all its rows every step; small on the CPU


def add_arguments(g: argparse.ArgumentParser) -> None:
    add_model_arguments(g, model_required=False)
    g.add_argument("--tiny", action="store_true",
                   help="write a tiny random-weight text-to-image model and serve it on the CPU (a quick look)")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    g.add_argument("--port", type=int, help="port (default: Gradio's first free one from 7860)")
    g.add_argument("--max-batch", type=int, help="rows per continuous batch (an image is 2 rows when guided)")
    g.add_argument("--memory-budget", help="bytes the serving batches may use, e.g. 20GiB (default: no limit)")
    g.add_argument("--max-images", type=int, default=4, help="most images per click (default 4)")
    g.add_argument("--concurrency", type=int, default=4,
                   help="clicks run at once; they share the runtime's batches (default 4)")
    g.add_argument("--preview-every", type=int,
                   help="AR steps between previews (0: none; default: about 8 per image)")
    g.add_argument("--default-size", help="WIDTHxHEIGHT selected at first (default: the model's; --tiny: 512x512)")


def run(a: argparse.Namespace) -> int:
    from ..errors import InvalidRequestError
    from ..request import check_int

    try:
        from ..frontends.gradio_app import launch_app
    except ImportError as e:
        raise InvalidRequestError(f"{e}") from None
    if a.tiny == (a.model is not None):
        raise InvalidRequestError("give a model path, or --tiny for a tiny random-weight model; not both.")
    check_int("--max-images", a.max_images, 1)
    check_int("--concurrency", a.concurrency, 1)
    if a.preview_every is not None:
        check_int("--preview-every", a.preview_every, 0)
    if a.port is not None:
        check_int("--port", a.port, 1, 65535)
    default_size = _size(a.default_size) if a.default_size else ((512, 512) if a.tiny else None)
    limits = {"memory_budget": a.memory_budget}
    if a.max_batch is not None or a.tiny:
        limits["max_batch"] = a.max_batch if a.max_batch is not None else TINY_MAX_BATCH
    with serving_runtime(a, **limits) as (runtime, _):
        previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)  # as Ctrl-C: Gradio closes its server
        try:
            launch_app(runtime, host=a.host, port=a.port, block=True, max_images=a.max_images,
                       concurrency=a.concurrency, preview_every=a.preview_every, default_size=default_size)
        finally:
            signal.signal(signal.SIGTERM, previous)
            runtime.stop_worker(cancel=True)
        return 0


def _size(text: str) -> tuple[int, int]:
    """``(height, width)`` of ``WIDTHxHEIGHT``."""
    from ..errors import InvalidRequestError

    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InvalidRequestError(f"--default-size {text!r} is not WIDTHxHEIGHT (e.g. 1024x1024).") from None
    return height, width


def _stop_on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt
