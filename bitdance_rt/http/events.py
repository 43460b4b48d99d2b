"""Server-sent event streams of a request, in two styles, framed by ``sse_starlette``.

``openai`` (``"stream": true``, OpenAI's image streaming): ``image_generation.partial_image`` events
(``b64_json``, ``partial_image_index``, ...) for the request's ``partial_images`` (0-3; spread evenly over the AR
steps, fewer when the preview budget does not allow them or the image finishes first), then one
``image_generation.completed`` event per image (``b64_json``, ``seed``, ...).

``progress`` (``"stream_events": "progress"``, and ``GET .../{id}/events``): ``queued`` ``{"id", "status"}``, then
``progress`` ``{"id", "step", "total"}`` after AR steps (only the newest when a client lags), with ``"preview"``
(base64 PNG of the first image so far, longer side <= ``preview_max_side``) every ``preview_every`` steps when the
preview budget allows; then ``done`` (the generation's answer body).

In both, a request that ends without images ends its stream with one ``error`` event (``{"error": {...}}``, the
body its HTTP answer would have). A stream that owns its request (``POST`` with ``stream``) cancels it when the
client leaves; a stream of an asynchronous request does not.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any, AsyncIterator

from sse_starlette import JSONServerSentEvent

from .errors import ApiError
from .jobs import TERMINAL, Job
from .results import final_answer

log = logging.getLogger("bitdance_rt.http")


def _newest_step(job: Job, events: list[dict[str, Any]]) -> tuple[int, int, bool]:
    """(step, total, ended) from the job and the events received since the last look."""
    step, total = job.progress()
    for e in events:
        if e.get("type") == "progress":
            step, total = max(step, int(e["step"])), int(e["total"])
    ended = job.done or any(e.get("type") in TERMINAL for e in events)
    return step, total, ended


async def _next_events(queue: asyncio.Queue) -> list[dict[str, Any]]:
    """Wait for at least one event; return it with every other one already queued."""
    events = [await queue.get()]
    while not queue.empty():
        events.append(queue.get_nowait())
    return events


def partial_steps(total: int, count: int) -> list[int]:
    """AR steps at which ``count`` partial images are due, spread evenly before the last step."""
    return [max(1, math.ceil(total * (i + 1) / (count + 1))) for i in range(count)]


class EventStream:
    """One stream of ``job`` (see the module docstring); iterate ``events()`` inside an ``EventSourceResponse``."""

    def __init__(self, server, job: Job, *, style: str, owns_request: bool):
        self.server, self.job, self.style, self.owns_request = server, job, style, owns_request

    async def events(self) -> AsyncIterator[JSONServerSentEvent]:
        server, job = self.server, self.job
        queue = job.subscribe()
        server.metrics.streams.inc()
        finished = False
        try:
            body = self._progress_events(queue) if self.style == "progress" else self._openai_events(queue)
            async for event in body:
                yield event
            finished = True
        except Exception:  # noqa: BLE001 - the headers are out: end the stream with an error event
            log.exception("event stream of %s failed", job.id)
            err = ApiError(500, f"internal server error in the event stream of request {job.id}; see the server "
                           "log.", code="internal_error")
            yield JSONServerSentEvent({"id": job.id, **err.body()}, event="error")
        finally:
            job.unsubscribe(queue)
            server.metrics.streams.dec()
            if self.owns_request:
                if not finished and not job.done:
                    job.cancel("disconnect")
                server.jobs.forget(job.id)

    async def _final(self) -> tuple[int, dict[str, Any]]:
        return await self.server.in_thread(final_answer, self.job)

    async def _progress_events(self, queue: asyncio.Queue) -> AsyncIterator[JSONServerSentEvent]:
        job, config = self.job, self.server.config
        yield JSONServerSentEvent({"id": job.id, "status": job.status}, event="queued")
        last_step = last_preview = 0
        events: list[dict[str, Any]] = []
        while True:
            step, total, ended = _newest_step(job, events)
            if step > last_step and not ended:
                data: dict[str, Any] = {"id": job.id, "step": step, "total": total}
                every = config.preview_every if config.preview_every is not None else max(1, total // 8)
                if every > 0 and step - last_preview >= every and step < total:
                    preview = await self.server.previews.b64(job, step, "png", config.preview_max_side)
                    if preview is not None:
                        data["preview"] = preview
                        last_preview = step
                yield JSONServerSentEvent(data, event="progress")
                last_step = step
            if ended:
                status, body = await self._final()
                yield JSONServerSentEvent(body, event="done" if status == 200 else "error")
                return
            events = await _next_events(queue)

    async def _openai_events(self, queue: asyncio.Queue) -> AsyncIterator[JSONServerSentEvent]:
        job, p = self.job, self.job.params
        due = partial_steps(job.progress()[1], p.partial_images)
        sent = 0
        events: list[dict[str, Any]] = []
        while True:
            step, total, ended = _newest_step(job, events)
            if not ended and sent < len(due) and step >= due[sent] and step < total:
                preview = await self.server.previews.b64(job, step, p.output_format, None)
                if preview is not None:
                    yield JSONServerSentEvent(self._image_event("image_generation.partial_image", preview,
                                                                partial_image_index=sent),
                                              event="image_generation.partial_image")
                    sent += 1
            if ended:
                status, body = await self._final()
                if status != 200:
                    yield JSONServerSentEvent(body, event="error")
                    return
                for item in body["data"]:
                    yield JSONServerSentEvent(self._image_event("image_generation.completed", item["b64_json"],
                                                                seed=item.get("seed")),
                                              event="image_generation.completed")
                return
            events = await _next_events(queue)

    def _image_event(self, kind: str, b64: str, **extra: Any) -> dict[str, Any]:
        p = self.job.params
        return {"type": kind, "b64_json": b64, "created_at": int(time.time()), "size": p.size, "quality": "auto",
                "background": "opaque", "output_format": p.output_format, "id": self.job.id,
                **{k: v for k, v in extra.items() if v is not None}}
