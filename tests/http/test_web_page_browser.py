"""The demo page in a real headless Chromium (Debian's ``chromium``; skipped when none is installed): load ``/``,
type a prompt, click Generate, wait until the page shows the final image, take a screenshot and check it — a PNG
of the viewport's size whose result-image area is not blank (pixel standard deviation above a threshold) — and
that the shown image is the one the server made. Once with the fake runtime (the page's plumbing, fast: also the
negative prompt, guidance, two images and a typed seed, each result captioned with its seed; and an API key), once
with the tiny text-to-image model's runtime (the real server end to end)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from browser_cdp import HeadlessChromium, find_chromium
from fake_runtime import FakeRuntime
from http_testing import running_server, tiny_runtime_or_skip

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (apt-get install -y chromium, or "
                                                          "bash scripts/install_browser.sh)")
VIEWPORT = (900, 800)
MIN_STD = 8.0  # the result area of a shown random image varies far more; an empty frame is flat (std ~ 0)


def _drive_page(server, prompt: str, timeout: float, steps: int | None = None, fields: dict | None = None,
                n: int | None = None, captions: list | None = None) -> tuple[Image.Image, dict, str]:
    """Type (``fields``: more inputs by id), choose ``n`` images, click, wait for the final image; returns the
    screenshot, the result image's box and its data URL; ``captions`` receives the seed captions shown."""
    with HeadlessChromium(CHROMIUM, *VIEWPORT) as browser:
        browser.navigate(server.url + "/")
        browser.wait_for("!document.getElementById('generate').disabled", 20)
        assert browser.evaluate("document.body.dataset.state") == "idle"
        assert browser.evaluate("document.getElementById('size').value") == "512x512"
        assert browser.evaluate("document.getElementById('result').hidden")
        browser.type_into("#prompt", prompt)
        assert browser.evaluate("document.getElementById('prompt').value") == prompt
        if steps is not None:
            browser.type_into("#steps", str(steps))
        for field, value in (fields or {}).items():
            browser.type_into(f"#{field}", str(value))
        if n is not None:
            browser.evaluate(f"document.getElementById('n').value = '{n}'")
        browser.click("#generate")
        state = browser.wait_for("['done', 'error'].includes(document.body.dataset.state) "
                                 "&& document.body.dataset.state", timeout)
        message = browser.evaluate("document.getElementById('status').textContent")
        assert state == "done", message
        browser.wait_for("document.getElementById('result').complete", 10)
        box = browser.rect("#result")
        src = browser.evaluate("document.getElementById('result').src")
        if captions is not None:
            captions.append(browser.evaluate("document.getElementById('result-caption').textContent"))
            captions.extend(browser.evaluate("[...document.querySelectorAll('#more figcaption')]"
                                             ".map((c) => c.textContent)"))
        shot = Image.open(io.BytesIO(browser.screenshot()))
        shot.load()
    return shot, box, src


def _check(shot: Image.Image, box: dict, src: str, size: tuple[int, int]) -> None:
    assert shot.format == "PNG" and shot.size == VIEWPORT
    assert box["width"] > 100 and box["height"] > 100
    assert box["x"] + box["width"] <= VIEWPORT[0] and box["y"] + box["height"] <= VIEWPORT[1], "result off screen"
    area = np.asarray(shot.convert("RGB").crop((int(box["x"]) + 2, int(box["y"]) + 2,
                                                 int(box["x"] + box["width"]) - 2, int(box["y"] + box["height"]) - 2)),
                      dtype=np.float64)
    assert area.std() > MIN_STD, f"the result area looks blank (std {area.std():.2f})"
    assert _shown(src).size == size


def _shown(src: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    shown = Image.open(io.BytesIO(base64.b64decode(src[len(prefix):])))
    shown.load()
    return shown


def test_page_with_fake_runtime():
    captions: list[str] = []
    with running_server(FakeRuntime(step_time=0.02), default_size=(512, 512), api_key="page-key") as server:
        shot, box, src = _drive_page(server, "a red fox in the snow", timeout=30, n=2, captions=captions,
                                     fields={"api_key": "page-key", "negative_prompt": "blurry", "guidance": 3.5,
                                             "seed": 5})
        request = server.runtime.requests[0]
    _check(shot, box, src, (512, 512))
    assert request.prompt == "a red fox in the snow" and request.negative_prompt == "blurry"
    assert request.guidance_scale == 3.5 and request.num_images == 2 and request.seed == 5
    assert captions == ["Result · seed 5", "seed 6"]  # image j of seed s has seed s + j
    expected = np.random.default_rng(5).integers(0, 256, size=(2, 512, 512, 3), dtype=np.uint8)[0]
    assert np.array_equal(np.asarray(_shown(src)), expected), "the page shows another image than the server made"


def test_page_with_tiny_model(t2i64_dir, single_thread):
    runtime = tiny_runtime_or_skip(t2i64_dir)
    with running_server(runtime, default_size=(512, 512), preview_every=8) as server:
        shot, box, src = _drive_page(server, "a lighthouse at dusk", timeout=120, steps=2)
    _check(shot, box, src, (512, 512))
