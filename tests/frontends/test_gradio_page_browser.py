"""The Gradio app's page in a real headless Chromium (skipped without one: ``bash scripts/install_browser.sh``):
type a prompt, set one sampling step, click Generate, wait for the gallery's image, then check a screenshot — a
PNG of the viewport whose gallery area is not blank — and that the page shows the seed it used."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the gradio extra is not installed (pip install -e '.[test]')")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "http"))
from browser_cdp import HeadlessChromium, find_chromium  # noqa: E402
from gradio_testing import served_app, tiny_runtime  # noqa: E402

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (apt-get install -y chromium, or "
                                                          "bash scripts/install_browser.sh)")
VIEWPORT = (1200, 900)
MIN_STD = 8.0  # a random tiny-model image varies far more; an empty gallery is flat

SET_ONE_STEP = """(() => {
  const input = document.querySelector('#steps input[type=number]');
  input.value = '1';
  input.dispatchEvent(new Event('input', {bubbles: true}));
  input.dispatchEvent(new Event('change', {bubbles: true}));
  return input.value;
})()"""
GALLERY_READY = """(() => {
  const images = [...document.querySelectorAll('#gallery img')];
  const seed = document.querySelector('#used-seed textarea, #used-seed input');
  return images.length > 0 && images.every(i => i.complete && i.naturalWidth > 0) && seed && seed.value !== '';
})()"""


def test_page_generates_and_shows_an_image(t2i64_dir, tmp_path, single_thread):
    runtime = tiny_runtime(t2i64_dir)
    with served_app(runtime, preview_every=0) as (_, url), HeadlessChromium(CHROMIUM, *VIEWPORT) as browser:
        browser.navigate(url + "/")
        browser.wait_for("document.querySelector('#generate') !== null", 60)
        assert browser.evaluate("document.querySelector('#size input').value") == "512x512 (1:1)"
        browser.type_into("#prompt textarea", "a lighthouse at dusk")
        assert browser.evaluate(SET_ONE_STEP) == "1"
        browser.click("#generate")
        browser.wait_for(GALLERY_READY, 300)
        box = browser.rect("#gallery img")
        seed = browser.evaluate("document.querySelector('#used-seed textarea, #used-seed input').value")
        shot = Image.open(io.BytesIO(browser.screenshot()))
        shot.load()
    shot.save(tmp_path / "gradio_page.png")
    assert shot.format == "PNG" and shot.size == VIEWPORT
    assert seed.isdigit()
    assert box["width"] > 100 and box["height"] > 100
    assert box["x"] + box["width"] <= VIEWPORT[0] and box["y"] + box["height"] <= VIEWPORT[1], "image off screen"
    area = np.asarray(shot.convert("RGB").crop((int(box["x"]) + 2, int(box["y"]) + 2,
                                                 int(box["x"] + box["width"]) - 2, int(box["y"] + box["height"]) - 2)),
                      dtype=np.float64)
    assert area.std() > MIN_STD, f"the gallery image looks blank (std {area.std():.2f})"
