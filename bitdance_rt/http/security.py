"""Who may talk to the server: trusted ``Host`` headers, the API key, CORS, and the warning when the server is
reachable beyond loopback without a key.

- ``HostCheck``: a request whose ``Host`` is not one of ``allowed_hosts`` gets 400 ``invalid_host``. This is what
  stops DNS rebinding (a web page on ``evil.example`` whose name resolves to 127.0.0.1 makes the browser send
  ``Host: evil.example`` to the loopback server). Patterns: exact names, ``*.example.com`` (any subdomain) or ``*``
  (any host). A server bound to loopback trusts ``localhost``, ``127.0.0.1`` and ``::1`` by default; one bound
  elsewhere trusts any host unless told otherwise.
- ``ApiKeyCheck``: with an API key set, every ``/v1/...`` request needs ``Authorization: Bearer <key>`` (401
  ``invalid_api_key`` otherwise; compared in constant time). The page, ``/health``, ``/healthz`` and ``/metrics``
  stay open, as in vLLM.
- CORS: Starlette's ``CORSMiddleware`` for the ``allowed_origins`` (none by default: same-origin only).
"""

from __future__ import annotations

import hmac
import ipaddress

from .errors import ApiError, send_error

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
PROTECTED_PREFIX = "/v1/"
ENV_API_KEY = "BITDANCE_API_KEY"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_allowed_hosts(bind_host: str) -> tuple[str, ...]:
    """Loopback names for a loopback server; any host otherwise."""
    if is_loopback(bind_host):
        return tuple(dict.fromkeys((*LOOPBACK_NAMES, bind_host.strip("[]").lower())))
    return ("*",)


def exposure_warning(bind_host: str, api_key: str | None) -> str | None:
    """The warning for a server reachable beyond loopback without an API key, else None."""
    if api_key or is_loopback(bind_host):
        return None
    return (f"listening on {bind_host}, beyond loopback, without an API key: anyone who can reach this port can "
            f"generate images and read finished results. Set --api-key (or {ENV_API_KEY}), or listen on 127.0.0.1 "
            "behind a reverse proxy.")


def host_name(value: str) -> str:
    """The host part of a ``Host`` header (port removed, IPv6 brackets removed), lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def host_allowed(name: str, patterns: tuple[str, ...]) -> bool:
    for p in patterns:
        p = p.lower()
        if p == "*" or p == name or (p.startswith("*.") and name.endswith(p[1:])):
            return True
    return False


def _header(scope, name: bytes) -> str | None:
    for k, v in scope.get("headers") or []:
        if k.lower() == name:
            return v.decode("latin-1")
    return None


class HostCheck:
    def __init__(self, app, allowed_hosts: tuple[str, ...]):
        self.app = app
        self.allowed = tuple(allowed_hosts)
        self.any = "*" in self.allowed

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and not self.any:
            raw = _header(scope, b"host")
            if raw is not None and not host_allowed(host_name(raw), self.allowed):
                await send_error(send, ApiError(
                    400, f"Host {raw!r} is not a name this server answers to; it answers to "
                    f"{', '.join(self.allowed)} (the operator sets them with --allowed-hosts).", code="invalid_host"))
                return
        await self.app(scope, receive, send)


class ApiKeyCheck:
    def __init__(self, app, api_key: str):
        self.app = app
        self._expected = f"Bearer {api_key}".encode("utf-8")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope.get("method") != "OPTIONS" and \
                (scope.get("path", "") + "/").startswith(PROTECTED_PREFIX):
            given = (_header(scope, b"authorization") or "").strip().encode("latin-1")
            if not hmac.compare_digest(given, self._expected):
                what = "no Authorization header" if not given else "a wrong API key"
                await send_error(send, ApiError(
                    401, f"this server needs an API key: send 'Authorization: Bearer <key>' (got {what}).",
                    code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}))
                return
        await self.app(scope, receive, send)
