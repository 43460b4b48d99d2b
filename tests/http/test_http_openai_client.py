"""The official ``openai`` Python client against the server (fake runtime, loopback, with an API key):
``images.generate`` with and without ``stream=True, partial_images=2``, the extensions through ``extra_body``,
``models.list``, and errors arriving as the client's typed exceptions (400 with ``param``, 401, 429, a failed
stream)."""

from __future__ import annotations

import base64
import io
import threading
import time

import pytest
from PIL import Image

from fake_runtime import FAIL_MARKER, FakeRuntime
from http_testing import running_server

openai = pytest.importorskip("openai")

KEY = "client-key"


@pytest.fixture(scope="module")
def server():
    with running_server(FakeRuntime(step_time=0.05), default_size=(512, 512), api_key=KEY, preview_budget=1.0,
                        model_name="bitdance-test") as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def _image(b64: str, fmt: str = "PNG") -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert image.format == fmt
    image.load()
    return image


def test_images_generate(client, server):
    out = client.images.generate(prompt="a red fox", size="512x512", n=2, response_format="b64_json",
                                 model="bitdance-test", quality="high", user="tester", extra_body={"seed": 4})
    assert len(out.data) == 2 and out.output_format == "png" and out.size == "512x512"
    assert [_image(d.b64_json).size for d in out.data] == [(512, 512)] * 2
    assert server.runtime.requests[-1].seed == 4


def test_images_generate_jpeg(client):
    out = client.images.generate(prompt="a red fox", size="512x512", output_format="jpeg", output_compression=50)
    assert _image(out.data[0].b64_json, "JPEG").size == (512, 512)


def test_images_generate_streaming_with_partial_images(client):
    stream = client.images.generate(prompt="a lighthouse", size="512x512", stream=True, partial_images=2,
                                    extra_body={"seed": 8})
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"], kinds
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    for e in events:
        assert _image(e.b64_json).size == (512, 512) and e.output_format == "png" and e.size == "512x512"


def test_models_list(client):
    assert [m.id for m in client.models.list().data] == ["bitdance-test"]


def test_errors_are_typed(client, server):
    with pytest.raises(openai.BadRequestError) as bad:
        client.images.generate(prompt="x", size="500x500")
    assert bad.value.status_code == 400 and bad.value.param == "size" and bad.value.code == "unsupported_size"
    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as auth:
        wrong.images.generate(prompt="x")
    assert auth.value.code == "invalid_api_key"
    with pytest.raises(openai.APIError, match="failed at AR step 2"):
        list(client.images.generate(prompt=f"x {FAIL_MARKER}", stream=True))


def test_rate_limited():
    rt = FakeRuntime()
    with running_server(rt, default_size=(512, 512), max_pending=1, retry_after_fallback_s=3) as server:
        rt.hold()
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30)
        first = threading.Thread(target=lambda: client.images.generate(prompt="x"), daemon=True)
        first.start()  # held by the runtime: the queue (1) is full
        deadline = time.monotonic() + 10
        while not rt.submitted and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(openai.RateLimitError) as limited:
            client.images.generate(prompt="y")
        assert limited.value.status_code == 429 and limited.value.response.headers["retry-after"] == "3"
        rt.release()
        first.join(10)
