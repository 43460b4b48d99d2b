"""The HTTP server of ``bitdance-rt serve`` (needs the ``serve`` extra: FastAPI, uvicorn, prometheus_client,
sse-starlette): an OpenAI-style images API with streaming, progress events with previews, health, Prometheus
metrics and a web page, over a ``Runtime``'s step-level API.

Modules: ``server`` (``ImageServer``, ``ServerConfig``: lifecycle, admission), ``app`` (the ASGI layers),
``routes`` (the endpoints), ``schema`` (request bodies -> ``ImageRequest``), ``json_body`` (decoding),
``events`` (event streams), ``previews`` (rate-limited previews), ``results`` (answers of finished requests),
``jobs`` (submitted requests), ``admission`` (drain rate, ``Retry-After``), ``guard`` (per-request limits and
counting), ``protocol`` (the connection layer's limits), ``security`` (hosts, API key, CORS), ``metrics``,
``images`` (encoding), ``errors`` (OpenAI-shaped errors), ``web/index.html`` (the page).
"""

from .server import ImageServer, ServerConfig

__all__ = ["ImageServer", "ServerConfig"]
