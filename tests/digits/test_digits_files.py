"""The shipped digits model's files: the normal loader reads every size from them (16x16 images, a 4x4 token grid,
P = 4, 10 classes plus the null class, 4 class tokens), they are the files the training run recorded, and they are
small enough to ship."""

from __future__ import annotations

import hashlib

import pytest
import torch

from bitdance_rt.digits.assets import ASSET_DIR, digits_files
from bitdance_rt.errors import InvalidRequestError

MAX_TOTAL_BYTES = 20 * 2 ** 20


def test_loader_reads_the_sizes_from_the_files(rt_digits, digits_record):
    m, cfg = rt_digits.model, rt_digits.model.config
    recorded = digits_record["model"]
    assert rt_digits.family.key == "c2i" and rt_digits.parallel == recorded["tokens_per_step"] == 4
    assert (cfg.num_classes, cfg.null_class, cfg.class_tokens) == (10, 10, recorded["class_tokens"])
    assert cfg.grid == recorded["token_grid"] == 4
    assert (cfg.dim, cfg.num_layers) == (recorded["dim"], recorded["layers"])
    assert m.decoder_layout.downsample == recorded["downsample"]
    assert cfg.grid * m.decoder_layout.downsample == recorded["image_size"] == 16
    assert m.head_config.block_kind == "trans" and m.head_config.width == recorded["head_width"]


def test_files_are_the_recorded_ones_and_small(digits_record):
    files = digits_files()
    total = 0
    for name, entry in digits_record["files"].items():
        data = (ASSET_DIR / name).read_bytes()
        assert len(data) == entry["bytes"] and hashlib.sha256(data).hexdigest() == entry["sha256"], name
        total += len(data)
    total += files.record.stat().st_size
    assert total <= MAX_TOTAL_BYTES


def test_the_tokenizer_file_holds_encoder_and_decoder(digits_record):
    state = torch.load(str(digits_files().tokenizer), map_location="cpu", weights_only=True)["state_dict"]
    assert any(k.startswith("encoder.") for k in state) and any(k.startswith("decoder.") for k in state)
    model = torch.load(str(digits_files().model), map_location="cpu", weights_only=True)
    assert set(model) == {"ema"}
    assert any(k.startswith("head.net.") for k in model["ema"]) and "cls_embedding.weight" in model["ema"]


def test_generates_images_of_its_own_size_and_refuses_other_classes(rt_digits):
    out = rt_digits.generate(class_labels=[3], num_sampling_steps=2, guidance_scale=2.0, seed=0, output_type="np")
    assert out.images.shape == (1, 16, 16, 3) and out.tokens.shape == (1, 16, 32)
    with pytest.raises(InvalidRequestError, match=r"0\.\.9"):
        rt_digits.generate(class_labels=[10], num_sampling_steps=1)
    with pytest.raises(InvalidRequestError, match="16x16"):
        rt_digits.generate(class_labels=[3], height=256, width=256, num_sampling_steps=1)
