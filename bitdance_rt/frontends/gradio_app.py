"""A Gradio app on the runtime with the release demo's controls (``app.py`` of the BitDance repository): prompt (or
a class picker for the class-conditional models), size from the model's list, sampling steps, guidance, number of
images, a seed with a "random" choice and a negative prompt.

Every click becomes one ``ImageRequest`` submitted to the runtime's continuous-batching scheduler, stepped by its
worker thread: Gradio's queue runs up to ``concurrency`` clicks at once, and those of one image size and step count
share a batch. While an image forms, previews (the tokens made so far, decoded) stream to the gallery every
``preview_every`` AR steps; a user who leaves cancels their request. Errors of a request (a size the model does not
make, a bad value) come back as the runtime's message.

``build_app(runtime)`` returns the ``gr.Blocks``; ``launch_app(runtime, host, port)`` serves it
(``bitdance-rt gradio MODEL``). Needs the ``gradio`` extra.
"""

from __future__ import annotations

import math
import os
import queue
import re
import secrets
import threading
from dataclasses import dataclass, field

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: the app may run offline

try:
    import gradio as gr
except ModuleNotFoundError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("the Gradio app needs gradio: pip install 'bitdance-rt[gradio]'") from e

from ..errors import BitDanceError
from ..request import ImageRequest
from ..runtime import Runtime

MAX_SEED = 2 ** 31 - 1  # what a Gradio Number holds exactly in every browser
DEFAULT_PREVIEWS = 8    # previews per request when preview_every is not given
SIZE_PATTERN = re.compile(r"^\s*(\d+)\s*[x×]\s*(\d+)")


@dataclass
class AppState:
    """What the app shares between clicks: the runtime and how many requests it saw stepping together."""
    runtime: Runtime
    preview_every: int | None
    peak_active: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def note_active(self) -> None:
        active = self.runtime.stats().get("active_requests", 0)
        with self._lock:
            self.peak_active = max(self.peak_active, active)


def size_label(height: int, width: int) -> str:
    """``"WIDTHxHEIGHT (w:h)"``, as the release's demo lists sizes."""
    g = math.gcd(width, height)
    return f"{width}x{height} ({width // g}:{height // g})"


def parse_size(value) -> tuple[int, int]:
    """``(height, width)`` of a size label or ``"WIDTHxHEIGHT"``."""
    match = SIZE_PATTERN.match(str(value or ""))
    if not match:
        raise gr.Error(f"size {value!r} is not WIDTHxHEIGHT; pick one of the listed sizes.")
    return int(match.group(2)), int(match.group(1))


def build_app(runtime: Runtime, *, max_images: int = 4, preview_every: int | None = None, concurrency: int = 4,
              default_size: tuple[int, int] | None = None, start_worker: bool = True,
              title: str | None = None) -> gr.Blocks:
    """The app for ``runtime``'s model. ``concurrency``: clicks Gradio runs at once (they share the runtime's
    batches); ``preview_every``: AR steps between previews (0: none; default about 8 per image);
    ``default_size``: the size selected at first, ``(height, width)`` (default: the model's);
    ``start_worker=False`` leaves starting the runtime's worker to the caller (tests)."""
    family = runtime.family
    if default_size is not None and tuple(default_size) not in family.sizes:
        raise BitDanceError(f"default_size {default_size[1]}x{default_size[0]} (width x height) is not a size of this "
                            f"model; it makes {', '.join(f'{w}x{h}' for h, w in family.sizes)}.")
    state = AppState(runtime, preview_every)
    if start_worker:
        runtime.start_worker()
    heading = title or f"BitDance ({family.title}) on bitdance-rt"
    with gr.Blocks(title=heading, analytics_enabled=False) as demo:
        gr.Markdown(f"### {heading}")
        with gr.Row():
            with gr.Column(scale=1):
                if family.condition_field == "prompt":
                    condition = gr.Textbox(label="Prompt", lines=3, placeholder="Enter your prompt here...",
                                           elem_id="prompt")
                else:
                    condition = gr.Dropdown(choices=[str(c) for c in range(family.num_classes)],
                                            value=str(min(207, family.num_classes - 1)), label="Class (ImageNet id)",
                                            filterable=True, elem_id="class-label")
                sizes = [size_label(h, w) for h, w in family.sizes]
                size = gr.Dropdown(choices=sizes, value=size_label(*(default_size or family.default_size)),
                                   label="Resolution (Width x Height)", allow_custom_value=True, elem_id="size")
                with gr.Row():
                    seed = gr.Number(label="Seed", value=42, precision=0, minimum=0, maximum=MAX_SEED,
                                     elem_id="seed")
                    random_seed = gr.Checkbox(label="Random seed", value=True, elem_id="random-seed")
                with gr.Row():
                    steps = gr.Slider(label="Diffusion sampling steps", minimum=1,
                                      maximum=max(100, family.default_steps), step=1, value=family.default_steps,
                                      elem_id="steps")
                    guidance = gr.Slider(label="CFG guidance scale", minimum=1.0, maximum=15.0, step=0.05,
                                         value=family.default_guidance, elem_id="guidance")
                images = gr.Slider(label="Images", minimum=1, maximum=max_images, step=1, value=1, elem_id="images")
                negative = None
                if family.condition_field == "prompt":
                    negative = gr.Textbox(label="Negative prompt", lines=1, elem_id="negative-prompt")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=1):
                gallery = gr.Gallery(label="Generated images", columns=2, height=520, object_fit="contain",
                                     format="png", interactive=False, elem_id="gallery")
                used_seed = gr.Textbox(label="Seed used", interactive=False, elem_id="used-seed")

        if family.condition_field == "prompt":
            def generate(prompt, negative_prompt, size, steps, guidance, images, seed, random_seed):
                if not str(prompt or "").strip():
                    raise gr.Error("Enter a prompt.")
                request = dict(prompt=str(prompt), negative_prompt=str(negative_prompt or "") or None)
                yield from _run(state, request, size, steps, guidance, images, seed, random_seed)

            inputs = [condition, negative, size, steps, guidance, images, seed, random_seed]
        else:
            def generate(class_label, size, steps, guidance, images, seed, random_seed):
                try:
                    label = int(class_label)
                except (TypeError, ValueError):
                    raise gr.Error(f"class {class_label!r} is not a class id; pick one of the list.") from None
                yield from _run(state, dict(class_label=label), size, steps, guidance, images, seed, random_seed)

            inputs = [condition, size, steps, guidance, images, seed, random_seed]
        button.click(generate, inputs=inputs, outputs=[gallery, used_seed], api_name="generate",
                     concurrency_limit=concurrency)
    demo.queue(default_concurrency_limit=concurrency)
    demo.bitdance_state = state
    return demo


def _run(state: AppState, condition: dict, size, steps, guidance, images, seed, random_seed):
    """Submit one request and yield ``(gallery images, seed text)``: previews while it forms, then the result."""
    height, width = parse_size(size)
    chosen = secrets.randbelow(MAX_SEED) if random_seed or seed is None else int(seed)
    request = ImageRequest(**condition, height=height, width=width, num_images=int(images),
                           num_sampling_steps=int(steps), guidance_scale=float(guidance), seed=chosen)
    try:
        handle = state.runtime.submit(request)
    except BitDanceError as e:
        raise gr.Error(str(e)) from None
    events: queue.Queue = queue.Queue()
    handle.add_listener(events.put)
    total = handle.progress[1]
    every = state.preview_every if state.preview_every is not None else max(1, total // DEFAULT_PREVIEWS)
    try:
        while True:
            event = events.get()
            if event["type"] == "progress":
                if event["step"] == 1:
                    state.note_active()
                if every and event["step"] % every == 0 and event["step"] < event["total"]:
                    yield handle.preview("pil"), str(chosen)
                continue
            if event["type"] == "done":
                yield handle.result().images, str(chosen)
                return
            raise gr.Error(f"generation {event['type']}: {event.get('error', 'the request was cancelled')}")
    finally:
        if not handle.done:  # the user left, or the app is closing
            handle.cancel()


def launch_app(runtime: Runtime, *, host: str = "127.0.0.1", port: int | None = None, block: bool = True,
               **app_options) -> gr.Blocks:
    """Build and serve the app on ``host:port`` (None: Gradio's first free port from 7860). ``block=False``
    returns at once with the server running in the background (``demo.close()`` stops it)."""
    demo = build_app(runtime, **app_options)
    demo.launch(server_name=host, server_port=port, share=False, show_error=True, quiet=not block,
                prevent_thread_lock=not block, ssr_mode=False)
    return demo
