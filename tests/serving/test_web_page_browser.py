"""The demo page in a real headless Chromium (Debian's ``chromium``; skipped when none is installed): load ``/``,
type a prompt, click Generate, wait until the page shows the final image, take a screenshot and check it — a PNG
of the viewport's size whose result-image area is not blank (pixel standard deviation above a threshold) — and
that the shown image is the one the server made. Once with the fake runtime (the page's plumbing, fast) and once
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


def _drive_page(server, prompt: str, timeout: float, steps: int | None = None) -> tuple[Image.Image, dict, str]:
    """Type, click, wait for the final image; returns the screenshot, the result image's box and its data URL."""
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
        browser.click("#generate")
        state = browser.wait_for("['done', 'error'].includes(document.body.dataset.state) "
                                 "&& document.body.dataset.state", timeout)
        message = browser.evaluate("document.getElementById('status').textContent")
        assert state == "done", message
        browser.wait_for("document.getElementById('result').complete", 10)
        box = browser.rect("#result")
        src = browser.evaluate("document.getElementById('result').src")
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
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    shown = Image.open(io.BytesIO(base64.b64decode(src[len(prefix):])))
    assert shown.size == size


def test_page_with_fake_runtime():
    with running_server(FakeRuntime(step_time=0.02), default_size=(512, 512)) as server:
        shot, box, src = _drive_page(server, "a red fox in the snow", timeout=30)
        prompt = server.runtime.submitted[0].params["prompt"]
    _check(shot, box, src, (512, 512))
    assert prompt == "a red fox in the snow"


def test_page_with_tiny_model(t2i64_dir, single_thread):
    runtime = tiny_runtime_or_skip(t2i64_dir)
    with running_server(runtime, default_size=(512, 512), preview_every=8) as server:
        shot, box, src = _drive_page(server, "a lighthouse at dusk", timeout=120, steps=2)
    _check(shot, box, src, (512, 512))
