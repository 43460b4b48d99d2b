"""Who may talk to the server (against the fake runtime, on loopback): the API key on ``/v1/`` (with ``/health``,
``/healthz``, ``/metrics`` and the page open), trusted ``Host`` headers against DNS rebinding, CORS for the allowed
origins only, no version banner, and the warning for a server reachable beyond loopback without a key."""

from __future__ import annotations

import pytest

from bitdance_rt.http.security import default_allowed_hosts, exposure_warning, host_allowed, host_name
from fake_runtime import FakeRuntime
from http_testing import GENERATIONS, call, running_server

KEY = "s3cret-key"
ORIGIN = "https://app.example.com"


@pytest.fixture(scope="module")
def server():
    with running_server(FakeRuntime(), default_size=(512, 512), api_key=KEY, allowed_origins=(ORIGIN,)) as s:
        yield s


def _auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("method,path,body", [("POST", GENERATIONS, {"prompt": "x"}),
                                              ("POST", GENERATIONS + "/async", {"prompt": "x"}),
                                              ("GET", "/v1/models", None),
                                              ("GET", GENERATIONS + "/gen-0123456789abcdef", None)])
@pytest.mark.parametrize("headers,says", [({}, "no Authorization header"), (_auth("wrong"), "a wrong API key"),
                                          ({"Authorization": KEY}, "a wrong API key")])
def test_v1_needs_the_key(server, method, path, body, headers, says):
    resp = call(server, method, path, body, headers=headers)
    assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
    err = resp.error()
    assert err["code"] == "invalid_api_key" and says in err["message"] and KEY not in err["message"]


def test_with_the_key(server):
    resp = call(server, "POST", GENERATIONS, {"prompt": "x", "seed": 1}, headers=_auth())
    assert resp.status == 200 and resp.json()["seed"] == 1
    models = call(server, "GET", "/v1/models", headers=_auth()).json()
    assert models == {"object": "list", "data": [{"id": "bitdance-t2i", "object": "model",
                                                   "created": server.started_at, "owned_by": "bitdance-rt"}]}


@pytest.mark.parametrize("path", ["/", "/health", "/healthz", "/metrics"])
def test_open_paths(server, path):
    resp = call(server, "GET", path)
    assert resp.status == 200
    if path == "/healthz":
        assert resp.json()["auth"] == "bearer"


def test_no_version_banner_and_safe_headers(server):
    resp = call(server, "GET", "/healthz")
    assert "Server" not in resp.headers
    for value in resp.headers.values():
        assert "python" not in value.lower() and "uvicorn" not in value.lower()
    assert resp.headers["X-Content-Type-Options"] == "nosniff" and resp.headers["X-Frame-Options"] == "DENY"


def test_cors_for_the_allowed_origin_only(server):
    ok = call(server, "GET", "/healthz", headers={"Origin": ORIGIN})
    assert ok.headers["Access-Control-Allow-Origin"] == ORIGIN
    other = call(server, "GET", "/healthz", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    preflight = call(server, "OPTIONS", GENERATIONS, headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status == 200, preflight.body  # a preflight carries no key, and needs none
    assert preflight.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()
    refused = call(server, "OPTIONS", GENERATIONS, headers={"Origin": "https://evil.example",
                                                            "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in refused.headers


@pytest.mark.parametrize("host,status", [("evil.example:{port}", 400), ("evil.example", 400),
                                         ("localhost:{port}", 200), ("127.0.0.1:{port}", 200),
                                         ("[::1]:{port}", 200), ("LOCALHOST", 200)])
def test_host_header_on_a_loopback_server(server, host, status):
    resp = call(server, "GET", "/healthz", headers={"Host": host.format(port=server.port)})
    assert resp.status == status
    if status == 400:
        err = resp.error()
        assert err["code"] == "invalid_host" and "--allowed-hosts" in err["message"]


def test_allowed_hosts_patterns():
    with running_server(FakeRuntime(), default_size=(512, 512), allowed_hosts=("*.example.com", "api.test")) as s:
        for host, status in (("gen.example.com", 200), ("a.b.example.com:80", 200), ("api.test", 200),
                             ("example.com", 400), ("localhost", 400), ("evil.test", 400)):
            assert call(s, "GET", "/health", headers={"Host": host}).status == status, host


def test_host_helpers():
    assert host_name("Example.COM:8000") == "example.com" and host_name("[::1]:80") == "::1"
    assert host_name("::1") == "::1" and host_name("localhost") == "localhost"
    assert host_allowed("x.example.com", ("*.example.com",)) and not host_allowed("example.com", ("*.example.com",))
    assert default_allowed_hosts("127.0.0.1") == ("localhost", "127.0.0.1", "::1")
    assert default_allowed_hosts("0.0.0.0") == ("*",)


def test_exposure_warning():
    warning = exposure_warning("0.0.0.0", None)
    assert warning is not None and "--api-key" in warning and "0.0.0.0" in warning
    assert exposure_warning("0.0.0.0", "key") is None
    assert exposure_warning("127.0.0.1", None) is None and exposure_warning("::1", None) is None
    assert exposure_warning("localhost", None) is None
    assert exposure_warning("192.168.1.5", None) is not None
