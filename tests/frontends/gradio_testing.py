"""Helpers of the Gradio app tests: a tiny model's runtime (fresh: the app starts its worker) and the app served
on loopback for the length of a ``with`` block."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from bitdance_rt.runtime import Runtime  # noqa: E402


def tiny_runtime(model: Path, tokenizer: Path | None = None) -> Runtime:
    return Runtime.from_pretrained(model, tokenizer_path=tokenizer, device="cpu", dtype=torch.float32, max_batch=4)


@contextmanager
def served_app(runtime: Runtime, **options):
    """``(demo, url)`` of the app on 127.0.0.1 (Gradio's first free port); closed and the worker stopped after."""
    from bitdance_rt.frontends.gradio_app import launch_app

    if runtime.family.condition_field == "prompt":
        options.setdefault("default_size", (512, 512))  # the tiny model's quick size
    demo = launch_app(runtime, host="127.0.0.1", port=None, block=False, **options)
    try:
        yield demo, demo.local_url.rstrip("/")
    finally:
        demo.close()
        runtime.stop_worker(cancel=True)
