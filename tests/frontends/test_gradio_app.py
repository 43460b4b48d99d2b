"""The Gradio app on loopback with the tiny models, driven through ``gradio_client``: one generation (previews
streamed, then the runtime's own image for the seed), two users whose requests share one batch of the runtime's
scheduler, a size the model does not make, and the class picker of a class-conditional model."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("gradio", reason="the gradio extra is not installed (pip install -e '.[test]')")
pytest.importorskip("gradio_client", reason="gradio_client is not installed (pip install -e '.[test]')")

from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from PIL import Image  # noqa: E402

from bitdance_rt.request import ImageRequest  # noqa: E402
from gradio_testing import served_app, tiny_runtime  # noqa: E402

T2I_ARGS = dict(negative_prompt="", size="512x512 (1:1)", steps=1, guidance=4.0, images=1, random_seed=False)


def image_of(gallery_item) -> Image.Image:
    image = Image.open(gallery_item["image"])
    image.load()
    return image


@pytest.fixture(scope="module")
def t2i_app(t2i64_dir, single_thread):
    runtime = tiny_runtime(t2i64_dir)
    with served_app(runtime, preview_every=8) as (demo, url):
        yield runtime, demo, Client(url, verbose=False)


def test_one_generation_streams_previews_then_the_image(t2i_app):
    runtime, _, client = t2i_app
    job = client.submit(prompt="a lighthouse at dusk", seed=7, api_name="/generate", **T2I_ARGS)
    gallery, seed = job.result(timeout=300)
    assert seed == "7" and len(gallery) == 1
    shown = np.asarray(image_of(gallery[0]).convert("RGB"))
    assert shown.shape == (512, 512, 3)
    # 16 AR steps, a preview every 8 (not at the last): one preview, then the result
    assert len(job.outputs()) == 2
    expected = runtime.submit(ImageRequest(prompt="a lighthouse at dusk", height=512, width=512, num_sampling_steps=1,
                                           guidance_scale=4.0, seed=7)).result(timeout=300).images[0]
    assert np.array_equal(shown, np.asarray(expected))


def test_a_size_the_model_does_not_make_is_refused(t2i_app):
    _, _, client = t2i_app
    with pytest.raises(AppError, match="500x500 is not a supported size; choose one of"):
        client.predict(prompt="a fox", seed=1, api_name="/generate", **{**T2I_ARGS, "size": "500x500"})
    with pytest.raises(AppError, match="Enter a prompt"):
        client.predict(prompt="  ", seed=1, api_name="/generate", **T2I_ARGS)


def test_two_users_share_one_batch(t2i64_dir, single_thread):
    runtime = tiny_runtime(t2i64_dir)
    with served_app(runtime, preview_every=0, start_worker=False, concurrency=4) as (demo, url):
        users = [Client(url, verbose=False) for _ in range(2)]
        jobs = [user.submit(prompt=prompt, seed=seed, api_name="/generate", **T2I_ARGS)
                for user, prompt, seed in zip(users, ("a red fox", "two cats"), (1, 2))]
        deadline = time.monotonic() + 120
        while runtime.stats()["queue_length"] < 2:  # both clicks have reached the runtime's queue
            assert time.monotonic() < deadline, "the two requests never reached the runtime"
            time.sleep(0.05)
        runtime.start_worker()
        results = [job.result(timeout=300) for job in jobs]
        assert demo.bitdance_state.peak_active == 2  # stepped together, in one batch
    assert [seed for _, seed in results] == ["1", "2"]
    a, b = (np.asarray(image_of(gallery[0]).convert("RGB")) for gallery, _ in results)
    assert a.shape == b.shape == (512, 512, 3) and not np.array_equal(a, b)


def test_class_conditional_app_has_a_class_picker(c2i16_files, single_thread):
    runtime = tiny_runtime(*c2i16_files)
    with served_app(runtime, preview_every=0) as (demo, url):
        client = Client(url, verbose=False)
        parameters = [p["parameter_name"] for p in client.view_api(print_info=False, return_format="dict")
                      ["named_endpoints"]["/generate"]["parameters"]]
        assert parameters[0] == "class_label" and "negative_prompt" not in parameters
        picker = next(c for c in demo.config["components"] if c.get("props", {}).get("elem_id") == "class-label")
        assert len(picker["props"]["choices"]) == runtime.family.num_classes
        gallery, seed = client.predict(class_label="207", size="256x256 (1:1)", steps=1, guidance=3.0, images=2,
                                       seed=3, random_seed=False, api_name="/generate")
    assert seed == "3" and [image_of(item).size for item in gallery] == [(256, 256), (256, 256)]
