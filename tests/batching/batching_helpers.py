"""Helpers of the step-API tests: runtimes over the session's tiny models with small serving limits, a loop that
steps until handles end, and an event recorder.

Runtimes are the reference backend on the CPU in float32, so ``submit``/``step`` run on an engine with the PyTorch
operations (no Triton). Requests use one sampling step and the smallest sizes (class-conditional 256x256 and
text-to-image 512x512: 16 AR steps each), so a request takes about a second on 2 cores.
"""

from __future__ import annotations

import threading

import torch

from bitdance_rt import Runtime

C2I = dict(num_sampling_steps=1, output_type="tokens")
T2I = dict(height=512, width=512, num_sampling_steps=1, output_type="tokens")
TIMEOUT_S = 60.0


def c2i_runtime(files, **limits) -> Runtime:
    model, tokenizer = files
    return Runtime.from_pretrained(model, tokenizer_path=tokenizer, device="cpu", dtype=torch.float32, **limits)


def t2i_runtime(directory, **limits) -> Runtime:
    return Runtime.from_pretrained(directory, device="cpu", dtype=torch.float32, **limits)


def run_until_done(rt: Runtime, *handles, max_rounds: int = 1000) -> int:
    """Step until every handle has ended; returns the rounds taken."""
    for rounds in range(max_rounds):
        if all(h.done for h in handles):
            return rounds
        rt.step()
    raise AssertionError(f"requests still running after {max_rounds} rounds: {handles}")


def steps(rt: Runtime, n: int) -> None:
    for _ in range(n):
        rt.step()


class Recorder:
    """A listener keeping every event it gets, thread-safe."""

    def __init__(self):
        self.events: list[dict] = []
        self._lock = threading.Lock()

    def __call__(self, event: dict) -> None:
        with self._lock:
            self.events.append(dict(event))

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def progress(self) -> list[int]:
        return [e["step"] for e in self.events if e["type"] == "progress"]
