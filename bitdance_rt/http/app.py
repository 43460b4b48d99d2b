"""``build_app(server)``: the ASGI application of an ``ImageServer``, outermost layer first:

``RequestGuard`` (counting, framing limits, body deadline, last-resort 500; ``guard.py``) -> ``HostCheck`` ->
CORS (only with ``allowed_origins``) -> ``ApiKeyCheck`` (only with an API key; ``security.py``) -> FastAPI with the
routes (``routes.py``). FastAPI's own answers are made OpenAI-shaped here: unknown paths 404 ``not_found``, wrong
methods 405 ``method_not_allowed`` with ``Allow``; a client that left while its body was read gets nothing (499 in
``/metrics``). No interactive docs, no ``Server`` banner (set in ``server.py``).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect

from .errors import ApiError
from .guard import RequestGuard
from .routes import CLIENT_LEFT, GENERATIONS, add_routes, json_response
from .security import ApiKeyCheck, HostCheck


async def _api_error(request: Request, exc: ApiError) -> Response:
    return json_response(exc.status, exc.body(), exc.headers)


async def _routing_error(request: Request, exc: StarletteHTTPException) -> Response:
    path = request.url.path
    if exc.status_code == 405:
        allow = ", ".join(sorted(m.strip() for m in (exc.headers or {}).get("Allow", "").split(",") if m.strip()))
        err = ApiError(405, f"{request.method} is not allowed on {path}; use {allow}.", code="method_not_allowed",
                       headers={"Allow": allow})
    elif exc.status_code == 404:
        err = ApiError(404, f"no endpoint at {path}; see GET / for the page, POST {GENERATIONS} to generate.",
                       code="not_found")
    else:
        err = ApiError(exc.status_code, str(exc.detail), code="http_error", headers=dict(exc.headers or {}))
    return json_response(err.status, err.body(), err.headers)


async def _client_left(request: Request, exc: ClientDisconnect) -> Response:
    return Response(status_code=CLIENT_LEFT)


async def _internal_error(request: Request, exc: Exception) -> Response:
    err = ApiError(500, "internal server error; see the server log.", code="internal_error")
    return json_response(500, err.body(), {"Connection": "close"})


def build_app(server):
    config = server.config
    api = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    api.state.server = server
    add_routes(api)
    api.add_exception_handler(ApiError, _api_error)
    api.add_exception_handler(StarletteHTTPException, _routing_error)
    api.add_exception_handler(ClientDisconnect, _client_left)
    api.add_exception_handler(Exception, _internal_error)
    app = api
    if config.api_key:
        app = ApiKeyCheck(app, config.api_key)
    if config.allowed_origins:
        app = CORSMiddleware(app, allow_origins=list(config.allowed_origins),
                             allow_methods=["GET", "HEAD", "POST", "DELETE", "OPTIONS"],
                             allow_headers=["Authorization", "Content-Type"],
                             expose_headers=["X-Request-Id", "Retry-After", "Location"], max_age=600)
    app = HostCheck(app, server.allowed_hosts)
    return RequestGuard(app, count=server.metrics.request, max_body_bytes=config.max_body_bytes,
                        receive_timeout=config.receive_timeout_s, limit_concurrency=config.limit_concurrency,
                        max_header_bytes=config.max_header_bytes)
