"""Tiny random-weight checkpoints: real file formats, the release's key names and shapes, determinism.

The expected key tables below are written out from the release's modules (modeling/vision_encoder/autoencoder.py,
modeling/vision_head/flow_head_parallel_x.py, modeling/utils.py, imagenet_gen/src/model*.py, layers*.py,
diff_head*.py, qae.py, gfq.py), independently of the writer's own helpers.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import pytest
import tokenizers
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoTokenizer, Qwen3ForCausalLM

from bitdance_rt.errors import InvalidRequestError
from bitdance_rt.tiny_models import SPECIAL_TOKENS, write_tiny_c2i, write_tiny_t2i

WRITE_TIME_LIMIT_S = 3.0


# ---------------------------------------------------------------------------------------------------------------
# Expected layouts (tiny sizes: z = 32, ch = 32, ch_mult = [1]*5, 1 res block; backbones of width 64)
# ---------------------------------------------------------------------------------------------------------------

def _res_block_32(prefix: str) -> dict:
    return {
        f"{prefix}.norm1.weight": (32,), f"{prefix}.norm1.bias": (32,),
        f"{prefix}.norm2.weight": (32,), f"{prefix}.norm2.bias": (32,),
        f"{prefix}.conv1.weight": (32, 32, 3, 3), f"{prefix}.conv2.weight": (32, 32, 3, 3),
    }


def expected_autoencoder(prefix: str = "", gan_decoder: bool = False) -> dict:
    enc, dec = f"{prefix}encoder", f"{prefix}decoder"
    keys = {f"{enc}.conv_in.weight": (32, 3, 3, 3)}
    for level in range(5):
        keys |= _res_block_32(f"{enc}.down.{level}.block.0")
        if level < 4:
            keys |= {f"{enc}.down.{level}.downsample.weight": (32, 32, 3, 3),
                     f"{enc}.down.{level}.downsample.bias": (32,)}
    keys |= _res_block_32(f"{enc}.mid_block.0")
    keys |= {f"{enc}.norm_out.weight": (32,), f"{enc}.norm_out.bias": (32,),
             f"{enc}.conv_out.weight": (32, 32, 1, 1), f"{enc}.conv_out.bias": (32,)}
    keys |= {f"{dec}.conv_in.weight": (32, 64 if gan_decoder else 32, 3, 3), f"{dec}.conv_in.bias": (32,)}
    keys |= _res_block_32(f"{dec}.mid_block.0")
    for level in range(5):
        keys |= _res_block_32(f"{dec}.up.{level}.block.0")
        if level > 0:
            keys |= {f"{dec}.up.{level}.upsample.conv1.weight": (128, 32, 3, 3),
                     f"{dec}.up.{level}.upsample.conv1.bias": (128,)}
        for name in ("gamma", "beta"):
            keys |= {f"{dec}.adaptive.{level}.{name}.weight": (32, 32), f"{dec}.adaptive.{level}.{name}.bias": (32,)}
    keys |= {f"{dec}.norm_out.weight": (32,), f"{dec}.norm_out.bias": (32,),
             f"{dec}.conv_out.weight": (3, 32, 3, 3), f"{dec}.conv_out.bias": (3,)}
    return keys


def expected_head(prefix: str, width: int, cond: int, adaln: int, trans: bool) -> dict:
    """TransEncoder (trans=True) or MlpEncoder keys, 2 blocks, SwiGLU of 1.5·width, 32-channel tokens."""
    hidden = int(1.5 * width)
    keys = {
        f"{prefix}.time_embed.mlp.0.weight": (width, 256), f"{prefix}.time_embed.mlp.0.bias": (width,),
        f"{prefix}.time_embed.mlp.2.weight": (width, width), f"{prefix}.time_embed.mlp.2.bias": (width,),
        f"{prefix}.cond_embed.weight": (width, cond), f"{prefix}.cond_embed.bias": (width,),
        f"{prefix}.input_proj.weight": (width, 32), f"{prefix}.input_proj.bias": (width,),
    }
    for i in range(2):
        b = f"{prefix}.res_blocks.{i}"
        if trans:
            keys |= {
                f"{b}.norm1.weight": (width,), f"{b}.norm1.bias": (width,),
                f"{b}.attn.wqkv.weight": (3 * width, width), f"{b}.attn.wqkv.bias": (3 * width,),
                f"{b}.attn.wo.weight": (width, width), f"{b}.attn.wo.bias": (width,),
                f"{b}.norm2.weight": (width,), f"{b}.norm2.bias": (width,),
            }
        else:
            keys |= {f"{b}.norm.weight": (width,), f"{b}.norm.bias": (width,)}
        keys |= {f"{b}.w1.weight": (2 * hidden, width), f"{b}.w1.bias": (2 * hidden,),
                 f"{b}.w2.weight": (width, hidden), f"{b}.w2.bias": (width,)}
    mod = 6 if trans else 3
    for k in range(adaln):
        keys |= {f"{prefix}.ada_ln_blocks.{k}.weight": (mod * width, width),
                 f"{prefix}.ada_ln_blocks.{k}.bias": (mod * width,)}
    keys |= {
        f"{prefix}.final_layer.ada_ln_modulation.weight": (2 * width, width),
        f"{prefix}.final_layer.ada_ln_modulation.bias": (2 * width,),
        f"{prefix}.final_layer.linear.weight": (32, width), f"{prefix}.final_layer.linear.bias": (32,),
    }
    return keys


def expected_c2i_model(parallel_num: int) -> dict:
    keys = expected_autoencoder("vae.")
    keys |= {"cls_embedding.weight": (1001, 64 * 64)}
    if parallel_num > 1:
        keys |= {"query_token": (1, parallel_num - 1, 64)}
    keys |= {"proj_in.w1.weight": (192, 32), "proj_in.w1.bias": (192,),
             "proj_in.w2.weight": (64, 96), "proj_in.w2.bias": (64,), "emb_norm.weight": (64,)}
    for i in range(2):
        keys |= {
            f"layers.{i}.attention.wqkv.weight": (192, 64), f"layers.{i}.attention.wo.weight": (64, 64),
            f"layers.{i}.feed_forward.w1.weight": (512, 64), f"layers.{i}.feed_forward.w2.weight": (64, 256),
            f"layers.{i}.attention_norm.weight": (64,), f"layers.{i}.ffn_norm.weight": (64,),
        }
    keys |= {"norm.weight": (64,), "pos_for_diff.weight": (256, 64)}
    trans = parallel_num > 1
    keys |= expected_head("head.net", width=128, cond=64, adaln=2 if trans else 1, trans=trans)
    return keys


def shapes_of(state: dict[str, torch.Tensor]) -> dict:
    return {k: tuple(v.shape) for k, v in state.items()}


def file_digests(directory: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(directory.iterdir())}


def load_pt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def t2i_dir(tmp_path_factory) -> Path:
    start = time.perf_counter()
    directory = write_tiny_t2i(tmp_path_factory.mktemp("t2i") / "tiny-64x", parallel_num=64, seed=0)
    elapsed = time.perf_counter() - start
    assert elapsed < WRITE_TIME_LIMIT_S, f"write_tiny_t2i took {elapsed:.2f} s"
    return directory


@pytest.fixture(scope="module")
def c2i_files(tmp_path_factory) -> dict[int, tuple[Path, Path]]:
    files = {}
    for p in (1, 16):
        start = time.perf_counter()
        files[p] = write_tiny_c2i(tmp_path_factory.mktemp(f"c2i{p}"), parallel_num=p, seed=0)
        elapsed = time.perf_counter() - start
        assert elapsed < WRITE_TIME_LIMIT_S, f"write_tiny_c2i(P={p}) took {elapsed:.2f} s"
    return files


# ---------------------------------------------------------------------------------------------------------------
# Text-to-image directory
# ---------------------------------------------------------------------------------------------------------------

def test_t2i_backbone_is_a_real_hf_qwen3(t2i_dir: Path) -> None:
    model, info = Qwen3ForCausalLM.from_pretrained(t2i_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    cfg = json.loads((t2i_dir / "config.json").read_text())
    assert cfg["model_type"] == "qwen3" and cfg["architectures"] == ["Qwen3ForCausalLM"]
    expected = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "head_dim": 16, "intermediate_size": 96, "rope_theta": 1e6, "rms_norm_eps": 1e-6,
                "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
    assert {k: cfg[k] for k in expected} == expected
    tokenizer = AutoTokenizer.from_pretrained(t2i_dir)
    assert cfg["vocab_size"] == len(tokenizer) == model.config.vocab_size

    index = json.loads((t2i_dir / "model.safetensors.index.json").read_text())
    shard_names = sorted(set(index["weight_map"].values()))
    assert shard_names == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    total = 0
    for name in shard_names:
        with safe_open(t2i_dir / name, framework="pt") as f:
            assert f.metadata() == {"format": "pt"}
            for key in f.keys():
                assert index["weight_map"][key] == name
                tensor = f.get_tensor(key)
                assert tensor.dtype == torch.bfloat16, key
                total += tensor.numel() * tensor.element_size()
    assert index["metadata"]["total_size"] == total
    assert "lm_head.weight" in index["weight_map"] and "model.embed_tokens.weight" in index["weight_map"]

    ids = torch.tensor([tokenizer.encode("<|im_start|>user\na red cube<|im_end|>\n")])
    hidden = model.model(input_ids=ids).last_hidden_state.float()
    assert torch.isfinite(hidden).all()
    assert 0.1 < hidden.std().item() < 10.0  # O(1) activations with the N(0, 1/fan_in) init


def test_t2i_tokenizer_matches_tokenizers_and_maps_specials_to_one_id(t2i_dir: Path) -> None:
    hf = AutoTokenizer.from_pretrained(t2i_dir)
    raw = tokenizers.Tokenizer.from_file(str(t2i_dir / "tokenizer.json"))
    cond = "<|im_start|>user\nA café at 9pm, two cats; \"hello\"  world!<|im_end|>\n<|im_start|>assistant\n"
    uncond = "<|im_start|>assistant\n"
    for prompt in (cond, uncond):
        full = prompt + "<|vision_start|><|res_64|><|res_128|>" + "".join(f"<|query_{i}|>" for i in range(1, 64))
        ids = hf.encode(full)
        assert ids == raw.encode(full).ids
        assert hf.decode(ids) == full
    assert hf.encode("a") == raw.encode("a").ids and len(hf.encode("a")) == 1  # no BOS/EOS added
    assert hf.encode("") == []
    special_ids = []
    for token in SPECIAL_TOKENS:
        ids = hf.encode(token)
        assert ids == [hf.convert_tokens_to_ids(token)], token
        special_ids += ids
    assert len(set(special_ids)) == len(SPECIAL_TOKENS)
    for needed in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|vision_start|>", "<|vision_end|>",
                   "<|res_1|>", "<|res_128|>", "<|query_1|>", "<|query_63|>"):
        assert needed in SPECIAL_TOKENS


def test_t2i_side_files_have_the_release_layout(t2i_dir: Path) -> None:
    ae_config = json.loads((t2i_dir / "ae_config.json").read_text())
    assert ae_config == {
        "ddconfig": {"double_z": False, "z_channels": 32, "in_channels": 3, "out_ch": 3, "ch": 32,
                     "ch_mult": [1, 1, 1, 1, 1], "num_res_blocks": 1, "resolution": 256},
        "gan_decoder": False,
    }
    head_config = json.loads((t2i_dir / "vision_head_config.json").read_text())
    assert head_config == {
        "ch_target": 32, "ch_cond": 64, "ch_latent": 256, "depth_latent": 2, "depth_adanln": 2, "time_shift": 1.0,
        "time_schedule": "logit_normal", "P_mean": 0.0, "P_std": 1.0, "parallel_num": 64, "diff_batch_mul": 1,
        "use_swiglu": True,
    }
    expected = {
        "ae.safetensors": expected_autoencoder(),
        "vision_head.safetensors": expected_head("net", width=256, cond=64, adaln=2, trans=True),
        "projector.safetensors": {"fc1.weight": (64, 32), "fc1.bias": (64,), "fc2.weight": (64, 64),
                                  "fc2.bias": (64,)},
    }
    for name, table in expected.items():
        with safe_open(t2i_dir / name, framework="pt") as f:
            assert f.metadata() == {"format": "pt"}, name
        state = load_file(t2i_dir / name)
        assert shapes_of(state) == table, name
        assert all(t.dtype == torch.float32 for t in state.values()), name


def test_t2i_gan_decoder_and_parallel_num_options(tmp_path: Path) -> None:
    directory = write_tiny_t2i(tmp_path / "gan16", parallel_num=16, gan_decoder=True, num_shards=3)
    assert json.loads((directory / "ae_config.json").read_text())["gan_decoder"] is True
    assert json.loads((directory / "vision_head_config.json").read_text())["parallel_num"] == 16
    assert shapes_of(load_file(directory / "ae.safetensors")) == expected_autoencoder(gan_decoder=True)
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == [f"model-0000{k}-of-00003.safetensors" for k in (1, 2, 3)]


def test_t2i_same_seed_same_bytes_other_seed_other_tensors(t2i_dir: Path, tmp_path: Path) -> None:
    again = write_tiny_t2i(tmp_path / "again", parallel_num=64, seed=0)
    assert file_digests(again) == file_digests(t2i_dir)
    other = write_tiny_t2i(tmp_path / "other", parallel_num=64, seed=1)
    for name in ("ae.safetensors", "vision_head.safetensors", "projector.safetensors",
                 "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        a, b = load_file(t2i_dir / name), load_file(other / name)
        assert a.keys() == b.keys()
        assert all(not torch.equal(a[k], b[k]) for k in a), name


# ---------------------------------------------------------------------------------------------------------------
# Class-conditional pair
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("parallel_num", [1, 16])
def test_c2i_checkpoint_has_the_release_layout(c2i_files, parallel_num: int) -> None:
    model_path, ae_path = c2i_files[parallel_num]
    assert model_path.name == f"BitDance_tiny_{parallel_num}x.pt" and ae_path.name == "ae_tiny_d16c32.pt"
    checkpoint = load_pt(model_path)
    assert list(checkpoint) == ["ema"]
    state = checkpoint["ema"]
    assert shapes_of(state) == expected_c2i_model(parallel_num)
    assert all(t.dtype == torch.float32 for t in state.values())
    assert not any(k.startswith("vae.quantize.") for k in state)  # GFQ's buffers are all non-persistent

    ae_state = load_pt(ae_path)["state_dict"]
    decoder_and_encoder = {k: v for k, v in shapes_of(ae_state).items() if not k.startswith("quantize.")}
    assert decoder_and_encoder == expected_autoencoder()
    assert any(k.startswith("quantize.") for k in ae_state)
    # the release loads the autoencoder file over the model's own vae.* weights: they must differ to tell them apart
    assert not torch.equal(ae_state["decoder.conv_in.weight"], state["vae.decoder.conv_in.weight"])


def test_c2i_entries(tmp_path: Path, c2i_files) -> None:
    ema = load_pt(c2i_files[16][0])["ema"]
    model_only = load_pt(write_tiny_c2i(tmp_path / "model", parallel_num=16, entry="model")[0])
    assert list(model_only) == ["model"]
    assert all(torch.equal(model_only["model"][k], ema[k]) for k in ema)
    both = load_pt(write_tiny_c2i(tmp_path / "both", parallel_num=16, entry="both")[0])
    assert sorted(both) == ["ema", "model"]
    assert all(torch.equal(both["ema"][k], ema[k]) for k in ema)
    assert all(not torch.equal(both["model"][k], ema[k]) for k in ema if k.startswith(("layers.", "head.")))


def test_c2i_same_seed_same_bytes_other_seed_other_tensors(tmp_path: Path, c2i_files) -> None:
    model_path, ae_path = c2i_files[16]
    again = write_tiny_c2i(tmp_path / "again", parallel_num=16, seed=0)
    assert [p.read_bytes() for p in again] == [model_path.read_bytes(), ae_path.read_bytes()]
    other_model, other_ae = write_tiny_c2i(tmp_path / "other", parallel_num=16, seed=7)
    a, b = load_pt(model_path)["ema"], load_pt(other_model)["ema"]
    assert all(not torch.equal(a[k], b[k]) for k in a)
    a, b = load_pt(ae_path)["state_dict"], load_pt(other_ae)["state_dict"]
    assert all(not torch.equal(a[k], b[k]) for k in a if not k.startswith("quantize."))


def test_weights_are_not_degenerate(c2i_files, t2i_dir: Path) -> None:
    """No zero-initialised adaLN / output layers; matrices have std ~ 1/sqrt(fan_in) (within 30 %)."""
    states = [load_pt(c2i_files[p][0])["ema"] for p in (1, 16)] + [load_file(t2i_dir / "vision_head.safetensors")]
    for state in states:
        for key, tensor in state.items():
            assert tensor.std() > 0, key
            is_matrix = tensor.dim() >= 2 and key.endswith(".weight") and "embedding" not in key
            if is_matrix and "pos_for_diff" not in key:
                expected = 1.0 / math.sqrt(math.prod(tensor.shape[1:]))
                assert abs(tensor.std().item() / expected - 1.0) < 0.3, key


def test_bad_arguments_raise_invalid_request(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="parallel_num=3"):
        write_tiny_t2i(tmp_path / "a", parallel_num=3)
    with pytest.raises(InvalidRequestError, match="parallel_num=256"):
        write_tiny_t2i(tmp_path / "b", parallel_num=256)
    with pytest.raises(InvalidRequestError, match="num_shards=0"):
        write_tiny_t2i(tmp_path / "c", num_shards=0)
    with pytest.raises(InvalidRequestError, match="entry='best'"):
        write_tiny_c2i(tmp_path / "d", entry="best")
    with pytest.raises(InvalidRequestError, match="parallel_num=8"):
        write_tiny_c2i(tmp_path / "e", parallel_num=8)
