"""What differs between the families when scheduling: a request's cache rows, the group it batches with, its
guidance scale at each AR step, and the AR steps it runs on its own before joining a batch.

Group key: ``(family, grid, P, sampling steps, guided, cache length)``: requests of one key share a ``SlotBatch``.
- Text-to-image: rows are token ids (prompt, then the negative or unconditional prompt when guided, per image);
  the cache length is ``max(prompt, PROMPT_POSITIONS) + (AR steps − 1)·P`` rounded up to ``CACHE_LEN_QUANTUM``, so
  prompts up to ``PROMPT_POSITIONS`` tokens (template and image-start tokens included) share one group and longer
  ones get a group of their own length bucket. The guidance scale is the request's, every step.
- Class-conditional: rows are class ids (the label, then the null class when guided); the cache holds the prefix
  and every image token. The scale follows the linear schedule ``1 + (g − 1)·k / S`` of the request's own AR step
  k; the leading steps where it is still <= 1 (step 0) run on the request's own rows, unguided over both rows of
  each image, as the release does, before it joins the batch (``leading_unguided_steps``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidRequestError
from ..engine.t2i_engine import CACHE_LEN_QUANTUM, T2IEngine
from ..reference.sampler import linear_guidance
from .request_spec import RequestSpec

PROMPT_POSITIONS = 256  # prompt positions (chat template and image-start tokens included) every T2I group holds


@dataclass(frozen=True)
class Placement:
    """How a request is batched: its rows (token ids or class ids, slot order), its longest row, group key and
    the group's cache length."""
    rows: list
    prompt_len: int
    key: tuple
    max_len: int


def _round_up(n: int, quantum: int) -> int:
    return -(-n // quantum) * quantum


class T2IPlan:
    family = "t2i"

    def __init__(self, engine):
        self.engine = engine

    def place(self, spec: RequestSpec) -> Placement:
        rows = self.engine.request_rows(spec.prompt, spec.negative_prompt, spec.grid, spec.num_images, spec.guided)
        longest = max(map(len, rows))
        needed = longest + (spec.num_ar - 1) * spec.parallel
        if needed > self.engine.max_positions:
            raise InvalidRequestError(
                f"the prompt is {longest - spec.parallel} tokens; with the {spec.num_ar * spec.parallel} image "
                f"tokens of {spec.height}x{spec.width} that is {needed} positions, more than the engine's "
                f"{self.engine.max_positions}; shorten the prompt.")
        max_len = _round_up(max(longest, PROMPT_POSITIONS) + (spec.num_ar - 1) * spec.parallel, CACHE_LEN_QUANTUM)
        key = ("t2i", spec.grid, spec.parallel, spec.num_steps, spec.guided, max_len)
        return Placement(rows, longest, key, max_len)

    def cfg_at(self, spec: RequestSpec, ar_step: int) -> float:
        return spec.guidance

    def leading_unguided_steps(self, spec: RequestSpec) -> int:
        return 0


class C2IPlan:
    family = "c2i"

    def __init__(self, engine):
        self.engine = engine

    def place(self, spec: RequestSpec) -> Placement:
        cfg = self.engine.cfg
        rows = self.engine.request_rows(spec.class_label, spec.num_images, spec.guided)
        max_len = cfg.num_prefix + cfg.num_tokens
        key = ("c2i", spec.grid, spec.parallel, spec.num_steps, spec.guided, max_len)
        return Placement(rows, cfg.num_prefix, key, max_len)

    def cfg_at(self, spec: RequestSpec, ar_step: int) -> float:
        return linear_guidance(spec.guidance, ar_step, spec.num_ar) if spec.guided else 1.0

    def leading_unguided_steps(self, spec: RequestSpec) -> int:
        k = 0
        while spec.guided and k < spec.num_ar and self.cfg_at(spec, k) <= 1.0:
            k += 1
        return k


def plan_for(engine) -> T2IPlan | C2IPlan:
    return T2IPlan(engine) if isinstance(engine, T2IEngine) else C2IPlan(engine)
