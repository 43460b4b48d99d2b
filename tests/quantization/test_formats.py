"""``check_quantization``: the accepted values, the error for an unknown one (listing the choices), and fp8 on a
CUDA device without FP8 tensor cores (naming its compute capability and suggesting "int8"). The capability is
passed in, so every case runs on the CPU; ``act_quant`` combinations of ``check_act_quant``."""

from __future__ import annotations

import pytest
import torch

from bitdance_rt.errors import InvalidRequestError, UnsupportedDeviceError
from bitdance_rt.quantization.formats import QUANTIZATIONS, check_act_quant, check_quantization


@pytest.mark.parametrize("value", QUANTIZATIONS)
def test_every_choice_runs_on_the_cpu(value):
    assert check_quantization(value, "cpu") == value
    assert check_quantization(value, torch.device("cpu")) == value


@pytest.mark.parametrize("value", ["fp4", "FP8", "int4", 8, "", True])
def test_unknown_value_lists_the_choices(value):
    with pytest.raises(InvalidRequestError) as info:
        check_quantization(value, "cpu")
    message = str(info.value)
    assert repr(value) in message
    assert all(repr(choice) in message for choice in QUANTIZATIONS), message


@pytest.mark.parametrize("capability", [(8, 0), (8, 6), (7, 5)])
def test_fp8_without_fp8_tensor_cores_suggests_int8(capability):
    with pytest.raises(UnsupportedDeviceError) as info:
        check_quantization("fp8", torch.device("cuda", 0), capability=capability)
    message = str(info.value)
    assert f"{capability[0]}.{capability[1]}" in message and "8.9" in message
    assert "quantization='int8'" in message


@pytest.mark.parametrize("capability", [(8, 9), (9, 0), (10, 0)])
def test_fp8_on_fp8_gpus_and_int8_anywhere(capability):
    cuda = torch.device("cuda", 0)
    assert check_quantization("fp8", cuda, capability=capability) == "fp8"
    assert check_quantization("int8", cuda, capability=(8, 0)) == "int8"
    assert check_quantization(None, cuda, capability=(7, 0)) is None


def test_act_quant_combinations():
    for act in ("token", "group", None):
        check_act_quant("fp8", act)
    check_act_quant("int8", None)
    with pytest.raises(InvalidRequestError, match="int8 weights are weight-only"):
        check_act_quant("int8", "token")
    with pytest.raises(InvalidRequestError, match="act_quant='channel' is unknown"):
        check_act_quant("fp8", "channel")
    with pytest.raises(InvalidRequestError, match="weight format 'fp16' is unknown"):
        check_act_quant("fp16", None)
