"""The sampler step on the CUDA extension (``csrc/sampler_step.cu``), its Gaussian noise made in the kernel.

- ``keyed_noise(seeds, ar_steps, rows_in_request, sample_index, patch, channels)`` -> ``[B, P, C]`` float32:
  the keyed normals of ``reference.philox_noise.keyed_normal`` (its docstring defines them), within a few
  float32 ulp of that float64 reference.
- ``sampler_step_keyed(pred, x, times, running, step, cfg, guided, seeds, ar_steps, rows_in_request)`` ->
  ``[B, P, C]``: the Triton ``sampler_step`` (same op order, bitwise the same given the same noise) with the noise
  of sample index ``step + 1`` generated in the kernel; no noise tensor is read.
- ``sampler_final`` (also exported as ``sampler_final``): the Triton ``sampler_final``'s signature and
  results (tokens, packed words, sample) in one launch.

Shapes: pred ``[m·B, P, C]`` float32 / bfloat16 / float16 (m = 2 when guided: conditional rows first); x ``[B, P,
C]`` float32; times ``[N + 1]``, running ``[N]`` float32; cfg a Python float or a float32 device tensor ``[1]`` or
``[B]`` (one scale per row); seeds ``[B]`` int64, ar_steps and rows_in_request ``[B]`` int32, all on x's CUDA
device. Outputs are written in place when given (``out`` may be ``x``), so the calls can be captured in a CUDA
graph when every tensor, cfg included, is passed in.
"""

from __future__ import annotations

import torch

from bitdance_rt.ops.argument_checks import check_tensor
from bitdance_rt.ops.sampler_contract import (FinalTokens, check_guidance, check_last_step_size, check_pred_and_x,
                                              check_times, final_outputs, step_output)
from bitdance_rt.reference.philox_noise import keyed_normal
from bitdance_rt.reference.sampler import LAST_STEP_SIZE, final_step_from_prediction, step_from_prediction
from bitdance_rt.cuda_ops._extension import operator

REFERENCE_NOISE = keyed_normal
REFERENCE_FINAL = final_step_from_prediction
MAX_SAMPLE_INDEX = 2 ** 32 - 1  # the sample index is one 32-bit word of the Philox counter


def sampler_step_keyed_reference(pred: torch.Tensor, x: torch.Tensor, times: torch.Tensor, running: torch.Tensor,
                                  step: int, cfg: float | torch.Tensor, guided: bool, seeds: torch.Tensor,
                                  ar_steps: torch.Tensor, rows_in_request: torch.Tensor) -> torch.Tensor:
    """What ``sampler_step_keyed`` computes, in PyTorch: ``step_from_prediction`` with the keyed noise of sample
    index ``step + 1`` (equal up to the few-ulp difference of the float32 noise)."""
    noise = keyed_normal(seeds, ar_steps, rows_in_request, step + 1, x.shape[1], x.shape[2]).to(x.device)
    return step_from_prediction(pred, x, running[step], times[step + 1] - times[step], noise, cfg, guided)


REFERENCE = sampler_step_keyed_reference


def _check_keys(op: str, seeds: torch.Tensor, ar_steps: torch.Tensor, rows_in_request: torch.Tensor,
                rows: int | None, device: torch.device) -> None:
    """seeds int64, ar_steps and rows_in_request int32, each ``[rows]`` (any length when None: seeds' length)."""
    check_tensor(op, "seeds", seeds, shape=(rows,), dtype=torch.int64, device=device)
    rows = seeds.shape[0]
    check_tensor(op, "ar_steps", ar_steps, shape=(rows,), dtype=torch.int32, device=device)
    check_tensor(op, "rows_in_request", rows_in_request, shape=(rows,), dtype=torch.int32, device=device)


def _operator(op: str, device: torch.device):
    return operator(op, device, "sampler_step", "sampler_step.cu")


def keyed_noise(seeds: torch.Tensor, ar_steps: torch.Tensor, rows_in_request: torch.Tensor, sample_index: int,
                  patch: int, channels: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Keyed standard normals ``[B, P, C]`` float32 of sample ``sample_index`` (0: the start sample, ``s + 1``:
    the noise of sampling step ``s``) for rows keyed by ``seeds [B]`` int64, ``ar_steps [B]`` and
    ``rows_in_request [B]`` int32 (CUDA tensors); into ``out`` when given."""
    op = "keyed_noise"
    if not isinstance(seeds, torch.Tensor):
        raise TypeError(f"{op}: seeds must be a torch.Tensor, got {type(seeds).__name__}")
    _check_keys(op, seeds, ar_steps, rows_in_request, None, seeds.device)
    if isinstance(sample_index, bool) or not isinstance(sample_index, int) or \
            not 0 <= sample_index <= MAX_SAMPLE_INDEX:
        raise ValueError(f"{op}: sample_index is {sample_index!r}, expected a Python int in [0, 2^32)")
    for name, size in (("patch", patch), ("channels", channels)):
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"{op}: {name} is {size!r}, expected a Python int >= 0")
    shape = (seeds.shape[0], patch, channels)
    if out is None:
        out = torch.empty(shape, dtype=torch.float32, device=seeds.device)
    else:
        check_tensor(op, "out", out, shape=shape, dtype=torch.float32, device=seeds.device)
    kernel = _operator(op, seeds.device)
    kernel(seeds, ar_steps, rows_in_request, sample_index, out)
    return out


def sampler_step_keyed(pred: torch.Tensor, x: torch.Tensor, times: torch.Tensor, running: torch.Tensor, step: int,
                        cfg: float | torch.Tensor, guided: bool, seeds: torch.Tensor, ar_steps: torch.Tensor,
                        rows_in_request: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """One Euler–Maruyama step with in-kernel noise; returns the new x ``[B, P, C]`` float32 (in ``out`` when
    given; ``out`` may be ``x``). As the Triton ``sampler_step`` with ``noise = keyed_noise(seeds, ar_steps,
    rows_in_request, step + 1, P, C)``; ``t = running[step]``, ``dt = times[step + 1] − times[step]`` read on the
    device; cfg one scale or one per row."""
    op = "sampler_step_keyed"
    check_pred_and_x(op, pred, x, guided)
    cfg = check_guidance(op, cfg, guided, x)
    check_times(op, times, running, step, x)
    _check_keys(op, seeds, ar_steps, rows_in_request, x.shape[0], x.device)
    out = step_output(op, x, out)
    kernel = _operator(op, x.device)
    kernel(pred, x, times, running, step, cfg, guided, seeds, ar_steps, rows_in_request, out)
    return out


def sampler_final(pred: torch.Tensor, x: torch.Tensor, cfg: float | torch.Tensor, guided: bool,
                         last_step_size: float = LAST_STEP_SIZE, tokens_out: torch.Tensor | None = None,
                         packed_out: torch.Tensor | None = None, *, tokens_dtype: torch.dtype | None = None,
                         pack: bool = False, sample_out: torch.Tensor | None = None,
                         keep_sample: bool = False) -> FinalTokens:
    """The last Euler step ``x + v·last_step_size`` (v at ``t = 1 − last_step_size``) and ``sign``, with the
    Triton ``sampler_final``'s arguments and results: tokens ``[m·B, P, C]`` in ``tokens_dtype`` (default pred's),
    packed int32 words ``[m·B, P, C / 32]`` with ``pack`` or a ``packed_out``, the float32 sample ``[B, P, C]``
    with ``keep_sample`` or a ``sample_out``."""
    op = "sampler_final"
    check_pred_and_x(op, pred, x, guided)
    cfg = check_guidance(op, cfg, guided, x)
    check_last_step_size(op, last_step_size)
    result = final_outputs(op, pred, x, tokens_out, packed_out, tokens_dtype, pack, sample_out, keep_sample)
    kernel = _operator(op, x.device)
    kernel(pred, x, cfg, guided, float(last_step_size), result.tokens, result.packed, result.sample)
    return result


sampler_final = sampler_final  # the engine's operation name (ops/dispatch.py looks functions up by it)
