"""The endpoints (FastAPI). Every answer is JSON unless said otherwise; every error is
``{"error": {"message", "type", "param", "code"}}``. GET routes answer HEAD too.

- ``POST /v1/images/generations``: OpenAI-style (``schema.py``); ``{"created", "data": [{"b64_json", "seed"}], "id",
  "seed", "output_format", "size"}`` once the images are made (the client leaving cancels the request). With
  ``"stream": true`` an event stream instead (``events.py``).
- ``POST /v1/images/generations/async``: same body; 202 ``{"id", "status", "url", "events_url"}`` at once.
- ``GET /v1/images/generations/{id}``: status and progress, with the images or the error once it ended.
- ``GET /v1/images/generations/{id}/events``: its progress events (leaving does not cancel it).
- ``DELETE /v1/images/generations/{id}``: cancel; 409 ``already_finished`` when it had ended.
- ``GET /v1/models``, ``GET /v1/models/{id}``: the served model, OpenAI's list format.
- ``GET /health`` (``{"status"}``), ``GET /healthz`` (the model's sizes, limits, defaults): 503 while stopping.
- ``GET /metrics``: Prometheus exposition (``metrics.py``). ``GET /``: the page (``web/index.html``).
"""

from __future__ import annotations

import json
import re
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import Response
from sse_starlette import EventSourceResponse
from starlette.convertors import Convertor, register_url_convertor

from .errors import ApiError
from .events import EventStream
from .jobs import TERMINAL, Job
from .json_body import check_json_media_type, decode_json_object
from .results import final_answer, job_summary
from .schema import GenerationParams, parse_generation

GENERATIONS = "/v1/images/generations"
JOB_ID = re.compile(r"gen-[0-9a-f]{16}")
CLIENT_LEFT = 499


class JobIdConvertor(Convertor):
    """``{job_id:genid}``: only well-formed ids match, so ``/async`` and other paths are not taken for ids."""
    regex = JOB_ID.pattern

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("genid", JobIdConvertor())


def json_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body).encode("utf-8"), status_code=status, media_type="application/json",
                    headers={"Cache-Control": "no-store", **(headers or {})})


def _server(request: Request):
    return request.app.state.server


# ---------------------------------------------------------------------------------------------------- generation
async def _read_params(request: Request) -> GenerationParams:
    server = _server(request)
    check_json_media_type(request.headers.get("content-type"))
    data = decode_json_object(await request.body())
    return parse_generation(data, server.limits, server.runtime.family)


async def _ended_or_left(job: Job, receive) -> bool:
    """Wait until ``job`` ends (False) or the client goes away first (True). The event loop tells: the body has
    been read, so the next message on the connection can only be its end."""
    left = False
    async with anyio.create_task_group() as group:
        async def watch() -> None:
            nonlocal left
            while (await receive())["type"] != "http.disconnect":
                pass
            left = True
            group.cancel_scope.cancel()

        group.start_soon(watch)
        await job.ended.wait()
        group.cancel_scope.cancel()
    return left


def _event_response(server, job: Job, style: str, owns_request: bool) -> EventSourceResponse:
    stream = EventStream(server, job, style=style, owns_request=owns_request)
    return EventSourceResponse(stream.events(), ping=server.config.heartbeat_s, headers={"X-Request-Id": job.id})


async def generate(request: Request) -> Response:
    server = _server(request)
    params = await _read_params(request)
    job = await server.submit(params)
    if params.stream:
        return _event_response(server, job, params.stream_events, owns_request=True)
    try:
        left = await _ended_or_left(job, request.receive)
    except BaseException:
        job.cancel("disconnect")
        server.jobs.forget(job.id)
        raise
    if left:
        job.cancel("disconnect")
        server.jobs.forget(job.id)
        return Response(status_code=CLIENT_LEFT)  # nobody reads it; counted in /metrics as 499
    status, body = await server.in_thread(final_answer, job)
    server.jobs.forget(job.id)
    return json_response(status, body, {"X-Request-Id": job.id})


async def generate_async(request: Request) -> Response:
    server = _server(request)
    job = await server.submit(await _read_params(request))
    url = f"{GENERATIONS}/{job.id}"
    return json_response(202, {"id": job.id, "status": job.status, "url": url, "events_url": url + "/events"},
                         {"Location": url})


def _job(request: Request, job_id: str) -> Job:
    server = _server(request)
    job = server.jobs.get(job_id)
    if job is None:
        raise ApiError(404, f"no request with id {job_id} (finished asynchronous requests are kept "
                       f"{server.config.finished_ttl_s:g} s; synchronous ones until answered).",
                       code="not_found", param="id")
    return job


async def job_resource(request: Request, job_id: str) -> Response:
    job = _job(request, job_id)
    if request.method == "DELETE":
        if job.status in TERMINAL:
            raise ApiError(409, f"request {job_id} already finished ({job.status}); nothing to cancel.",
                           code="already_finished", param="id")
        job.cancel("delete")
        with anyio.move_on_after(5.0):
            await job.ended.wait()
        return json_response(200, {"id": job.id, "status": job.status})
    return json_response(200, await _server(request).in_thread(job_summary, job))


async def job_events(request: Request, job_id: str) -> Response:
    return _event_response(_server(request), _job(request, job_id), "progress", owns_request=False)


# ---------------------------------------------------------------------------------------------------- the rest
async def page(request: Request) -> Response:
    server = _server(request)
    if server.page is None:
        raise ApiError(500, "the page web/index.html is missing from this installation.", code="page_missing")
    return Response(server.page, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-store"})


async def health(request: Request) -> Response:
    stopping = _server(request).stopping
    return json_response(503 if stopping else 200, {"status": "stopping" if stopping else "ok"})


async def healthz(request: Request) -> Response:
    server = _server(request)
    stopping = server.stopping
    return json_response(503 if stopping else 200, {"status": "stopping" if stopping else "ok", **server.info})


async def metrics(request: Request) -> Response:
    server = _server(request)
    text, content_type = await server.in_thread(server.metrics.render, request.headers.get("accept"))
    return Response(text, media_type=content_type, headers={"Cache-Control": "no-store"})


def _model_card(server) -> dict[str, Any]:
    return {"id": server.model_name, "object": "model", "created": server.started_at, "owned_by": "bitdance-rt"}


async def models(request: Request) -> Response:
    return json_response(200, {"object": "list", "data": [_model_card(_server(request))]})


async def model(request: Request, model_id: str) -> Response:
    server = _server(request)
    if model_id != server.model_name:
        raise ApiError(404, f"model {model_id!r} is not served here; this server serves {server.model_name!r}.",
                       code="model_not_found", param="model")
    return json_response(200, _model_card(server))


def add_routes(app: FastAPI) -> None:
    read = ["GET", "HEAD"]
    for path, endpoint, methods in (
            ("/", page, read), ("/health", health, read), ("/healthz", healthz, read), ("/metrics", metrics, read),
            ("/v1/models", models, read), ("/v1/models/{model_id:path}", model, read),
            (GENERATIONS, generate, ["POST"]), (GENERATIONS + "/async", generate_async, ["POST"]),
            (GENERATIONS + "/{job_id:genid}", job_resource, ["GET", "HEAD", "DELETE"]),
            (GENERATIONS + "/{job_id:genid}/events", job_events, read)):
        app.add_api_route(path, endpoint, methods=methods, include_in_schema=False)
