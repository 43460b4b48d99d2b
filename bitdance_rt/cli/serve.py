"""``bitdance-rt serve [MODEL | --tiny]``: the HTTP server (see ``bitdance_rt/serving/http_cli.py``)."""

from __future__ import annotations

import argparse

from .model_options import add_model_arguments

NAME = "serve"
HELP = "serve a model over HTTP: OpenAI-style images API, progress events, web page"


def add_arguments(s: argparse.ArgumentParser) -> None:
    add_model_arguments(s, model_required=False)
    s.add_argument("--tiny", action="store_true",
                   help="write a tiny random-weight text-to-image model and serve it on the CPU (a quick look)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    s.add_argument("--port", type=int, default=8000, help="0 picks a free port")
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


def run(a: argparse.Namespace) -> int:
    from ..serving.http_cli import serve

    return serve(a)
