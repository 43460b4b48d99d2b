"""``Runtime.from_pretrained(quantization=...)``: the argument is checked before anything is read, the loaded model
holds 8-bit backbone and head linears (the projector, the decoder and the small projections stay float), and
``describe()["memory"]`` reports the bytes as held."""

from __future__ import annotations

import pytest
import torch

from bitdance_rt.errors import InvalidRequestError, UnsupportedDeviceError
from bitdance_rt.quantization import QuantizedLinear, QuantizedWeight
from bitdance_rt.runtime import Runtime


def test_unknown_quantization_lists_the_choices_before_reading(tmp_path):
    with pytest.raises(InvalidRequestError, match="quantization='int4' is unknown; choose one of None, 'fp8', 'int8'"):
        Runtime.from_pretrained(tmp_path / "no-such-model", device="cpu", quantization="int4")


def test_fp8_on_a_gpu_without_fp8_names_the_capability_and_int8(tmp_path, monkeypatch):
    import bitdance_rt.runtime as runtime_module

    monkeypatch.setattr(runtime_module, "resolve_device", lambda device: torch.device("cuda:0"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    with pytest.raises(UnsupportedDeviceError, match=r"compute capability 8\.0.*quantization='int8'"):
        Runtime.from_pretrained(tmp_path / "no-such-model", quantization="fp8")  # refused before the path is read


@pytest.mark.parametrize("quantization", ["int8", "fp8"])
def test_quantized_load_and_memory_report(t2i64_dir, quantization):
    rt = Runtime.from_pretrained(t2i64_dir, device="cpu", dtype=torch.float32, backend="reference",
                                 quantization=quantization)
    float_rt = Runtime.from_pretrained(t2i64_dir, device="cpu", dtype=torch.float32, backend="reference")
    model = rt.model
    quantized = [m for part in (model.backbone, model.head) for m in part.modules() if isinstance(m, QuantizedLinear)]
    assert quantized and all(m.fmt == quantization for m in quantized)
    # left in float: the projector, the decoder, the head's time embedding and 32-channel projections
    for module in (model.projector, model.decoder, model.head.time_embed, model.head.input_proj,
                   model.head.final_layer.linear):
        assert not any(isinstance(m, QuantizedLinear) for m in module.modules())
    # born fused: q/k/v and gate/up as one 8-bit weight each, the modules views of it
    attn = model.backbone.layers[0].self_attn
    assert isinstance(attn.qkv_weight, QuantizedWeight)
    assert attn.q_proj.data.data_ptr() == attn.qkv_weight.data.data_ptr()
    assert isinstance(model.head.adaln_weight, QuantizedWeight)
    info, float_info = rt.describe(), float_rt.describe()
    assert info["quantization"] == quantization and float_info["quantization"] is None
    mem, float_mem = info["memory"], float_info["memory"]
    assert mem["weights_bytes"] < float_mem["weights_bytes"]
    assert mem["peak_bytes"] == mem["weights_bytes"] + mem["batch_bytes"] + mem["join_bytes"]
    # the float32 weights of the quantized linears became 1-byte codes plus one float32 scale per output row
    saved = sum(m.in_features * m.out_features * 3 - m.out_features * 4 for m in quantized)
    assert float_mem["weights_bytes"] - mem["weights_bytes"] == saved


def test_cli_takes_quantization(t2i64_dir, capsys):
    import json

    from bitdance_rt.cli import main

    assert main(["info", str(t2i64_dir), "--json", "--device", "cpu", "--backend", "triton",
                 "--quantization", "fp8"]) == 0
    kernels = json.loads(capsys.readouterr().out)["kernels"]
    assert kernels["quantization"].startswith("fp8") and "quantized_linear" in kernels["triton"].split()
    with pytest.raises(SystemExit):
        main(["info", str(t2i64_dir), "--quantization", "int4"])
    assert "invalid choice: 'int4'" in capsys.readouterr().err
