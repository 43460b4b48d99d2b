"""What of ``bitdance_rt.cuda_ops.sampler_step`` runs without a GPU: the launchers' argument checks (they fire
before the extension is asked for), the UnsupportedDeviceError for CPU tensors, the composite reference
``sampler_step_keyed_reference`` (``step_from_prediction`` with the keyed noise of sample ``step + 1``) and the
engine-facing alias ``sampler_final``. CPU tensors throughout, on any machine.
"""

from __future__ import annotations

import pytest
import torch

from bitdance_rt.cuda_ops import sampler_step as ops
from bitdance_rt.errors import UnsupportedDeviceError
from bitdance_rt.reference.philox_noise import keyed_normal
from bitdance_rt.reference.sampler import running_times, step_from_prediction, step_times


def inputs(batch: int = 2, patch: int = 4, channels: int = 32, guided: bool = True, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, patch, channels, generator=gen)
    pred = torch.randn(batch * (2 if guided else 1), patch, channels, generator=gen) * 0.5
    keys = (torch.randint(-2 ** 40, 2 ** 40, (batch,), generator=gen, dtype=torch.int64),
            torch.randint(0, 100, (batch,), generator=gen, dtype=torch.int32),
            torch.randint(0, 4, (batch,), generator=gen, dtype=torch.int32))
    times = step_times(6, 1.0, "cpu")
    return pred, x, times, running_times(times), keys


def test_reference_is_step_with_keyed_noise():
    """The composite reference, with one scale and with one per row, equals ``step_from_prediction`` fed
    ``keyed_normal`` of sample ``step + 1`` (and differs from the noise of sample ``step``)."""
    pred, x, times, running, keys = inputs(batch=3, seed=1)
    noise = keyed_normal(*keys, 3, 4, 32)
    dt = times[3] - times[2]
    for cfg in (2.5, torch.tensor([1.5, 2.0, 4.0])):
        got = ops.sampler_step_keyed_reference(pred, x, times, running, 2, cfg, True, *keys)
        assert torch.isfinite(got).all()
        assert torch.equal(got, step_from_prediction(pred, x, running[2], dt, noise, cfg, True))
    wrong = step_from_prediction(pred, x, running[2], dt, keyed_normal(*keys, 2, 4, 32), 2.5, True)
    assert not torch.equal(ops.sampler_step_keyed_reference(pred, x, times, running, 2, 2.5, True, *keys), wrong)
    assert ops.REFERENCE is ops.sampler_step_keyed_reference and ops.REFERENCE_NOISE is keyed_normal
    assert ops.sampler_final is ops.sampler_final


def test_cpu_tensors_raise_unsupported_device():
    pred, x, times, running, keys = inputs()
    with pytest.raises(UnsupportedDeviceError, match="sampler_step_keyed: the CUDA extension runs on CUDA tensors"):
        ops.sampler_step_keyed(pred, x, times, running, 0, 2.0, True, *keys)
    with pytest.raises(UnsupportedDeviceError, match="keyed_noise: the CUDA extension runs on CUDA tensors"):
        ops.keyed_noise(*keys, 0, 4, 32)
    with pytest.raises(UnsupportedDeviceError, match="sampler_final: the CUDA extension runs on CUDA"):
        ops.sampler_final(pred, x, 2.0, True, pack=True)


def test_step_argument_errors():
    pred, x, times, running, keys = inputs()
    seeds, ar_steps, rows = keys
    step = ops.sampler_step_keyed
    with pytest.raises(ValueError, match=r"sampler_step_keyed: pred has shape \[4, 4, 32\], expected \[2, 4, 32\]"):
        step(pred, x, times, running, 0, 2.0, False, *keys)
    with pytest.raises(ValueError, match="sampler_step_keyed: x has dtype torch.float64"):
        step(pred, x.double(), times, running, 0, 2.0, True, *keys)
    with pytest.raises(ValueError, match=r"sampler_step_keyed: step is 6, expected a Python int in \[0, 6\)"):
        step(pred, x, times, running, 6, 2.0, True, *keys)
    with pytest.raises(ValueError, match=r"sampler_step_keyed: running has shape \[7\], expected \[6\]"):
        step(pred, x, times, times, 0, 2.0, True, *keys)
    with pytest.raises(TypeError, match="sampler_step_keyed: guided must be a bool"):
        step(pred, x, times, running, 0, 2.0, 1, *keys)
    with pytest.raises(ValueError, match=r"sampler_step_keyed: cfg has shape \[3\], expected \[1\] \(one scale\) or "
                                         r"\[2\]"):
        step(pred, x, times, running, 0, torch.ones(3), True, *keys)
    with pytest.raises(ValueError, match="sampler_step_keyed: seeds has dtype torch.int32, expected torch.int64"):
        step(pred, x, times, running, 0, 2.0, True, seeds.int(), ar_steps, rows)
    with pytest.raises(ValueError, match="sampler_step_keyed: ar_steps has dtype torch.int64, expected torch.int32"):
        step(pred, x, times, running, 0, 2.0, True, seeds, ar_steps.long(), rows)
    with pytest.raises(ValueError, match=r"sampler_step_keyed: rows_in_request has shape \[1\], expected \[2\]"):
        step(pred, x, times, running, 0, 2.0, True, seeds, ar_steps, rows[:1])
    with pytest.raises(ValueError, match="sampler_step_keyed: out has dtype torch.bfloat16"):
        step(pred, x, times, running, 0, 2.0, True, *keys, out=torch.empty_like(x, dtype=torch.bfloat16))


def test_noise_and_final_argument_errors():
    pred, x, _, _, keys = inputs(channels=48)
    seeds, ar_steps, rows = keys
    with pytest.raises(ValueError, match=r"keyed_noise: seeds has shape \[2, 1\], expected \[\*\]"):
        ops.keyed_noise(seeds.view(2, 1), ar_steps, rows, 0, 4, 48)
    for bad in (-1, 2 ** 32, True, 1.0):
        with pytest.raises(ValueError, match=r"keyed_noise: sample_index is .*, expected a Python int in "
                                             r"\[0, 2\^32\)"):
            ops.keyed_noise(*keys, bad, 4, 48)
    with pytest.raises(ValueError, match="keyed_noise: channels is -1, expected a Python int >= 0"):
        ops.keyed_noise(*keys, 0, 4, -1)
    with pytest.raises(ValueError, match=r"keyed_noise: out has shape \[2, 4, 32\], expected \[2, 4, 48\]"):
        ops.keyed_noise(*keys, 0, 4, 48, out=torch.empty(2, 4, 32))
    with pytest.raises(ValueError, match="sampler_final: packing needs a channel count that is a multiple "
                                         "of 32, got C = 48"):
        ops.sampler_final(pred, x, 2.0, True, pack=True)
    with pytest.raises(ValueError, match="sampler_final: last_step_size is 0.0"):
        ops.sampler_final(pred, x, 2.0, True, last_step_size=0.0)
    with pytest.raises(ValueError, match="sampler_final: tokens_dtype is torch.int8"):
        ops.sampler_final(pred, x, 2.0, True, tokens_dtype=torch.int8)
