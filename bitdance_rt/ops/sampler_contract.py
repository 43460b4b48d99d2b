"""Argument checks and output buffers of the sampler-step launchers, shared by the Triton kernels
(``kernels/sampler_step.py``) and the CUDA operators (``bitdance_rt/cuda_ops/sampler_step.py``); imports no Triton.

Shapes: x ``[B, P, C]`` float32; pred ``[m·B, P, C]`` float32 / bfloat16 / float16 (m = 2 when guided); cfg a
Python float or a float32 device tensor of one scale (``[1]``, or 0-d) or one per row (``[B]``); times ``[N + 1]``
and running ``[N]`` float32; tokens ``[m·B, P, C]``, packed words int32 ``[m·B, P, C / 32]``, sample ``[B, P, C]``.
Every error names the launcher, the argument and what to pass.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from bitdance_rt.ops.argument_checks import check_tensor
from bitdance_rt.reference.token_packing import BITS_PER_WORD

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # pred and tokens


class FinalTokens(NamedTuple):
    """What ``sampler_final`` wrote: tokens ``[m·B, P, C]``; packed int32 words ``[m·B, P, C / 32]`` or None;
    the continuous final sample ``[B, P, C]`` float32 (``sample_patch``'s result, first half) or None."""
    tokens: torch.Tensor
    packed: torch.Tensor | None
    sample: torch.Tensor | None


def check_guidance(kernel: str, cfg: float | torch.Tensor, guided: bool, x: torch.Tensor) -> torch.Tensor:
    """The guidance scale as the float32 device tensor the kernels read: one element, or ``[B]`` (one per row of
    x). A Python float is put into a new ``[1]`` tensor (pass a device tensor inside a captured graph)."""
    if not isinstance(guided, bool):
        raise TypeError(f"{kernel}: guided must be a bool, got {type(guided).__name__}")
    if isinstance(cfg, torch.Tensor):
        check_tensor(kernel, "cfg", cfg, dtype=torch.float32, device=x.device)
        batch = x.shape[0]
        if cfg.numel() != 1 and (cfg.ndim != 1 or cfg.shape[0] != batch):
            raise ValueError(f"{kernel}: cfg has shape {list(cfg.shape)}, expected [1] (one scale) or [{batch}] "
                             "(one scale per row of x)")
        return cfg
    if isinstance(cfg, bool) or not isinstance(cfg, (int, float)):
        raise TypeError(f"{kernel}: cfg must be a Python float or a float32 device tensor of one element or one "
                        f"per row, got {type(cfg).__name__}")
    return torch.full((1,), float(cfg), dtype=torch.float32, device=x.device)


def cfg_per_row(cfg: torch.Tensor) -> bool:
    """Whether a checked scale tensor holds one scale per row (else one for all)."""
    return cfg.numel() != 1


def check_pred_and_x(kernel: str, pred: torch.Tensor, x: torch.Tensor, guided: bool) -> None:
    """x ``[B, P, C]`` float32; pred ``[m·B, P, C]`` of a float dtype on x's device."""
    check_tensor(kernel, "x", x, shape=(None, None, None), dtype=torch.float32)
    rows = x.shape[0] * (2 if guided else 1)
    check_tensor(kernel, "pred", pred, shape=(rows, x.shape[1], x.shape[2]), dtype=FLOAT_DTYPES, device=x.device)


def check_times(kernel: str, times: torch.Tensor, running: torch.Tensor, step: int, x: torch.Tensor) -> None:
    """times ``[N + 1]``, running ``[N]`` float32 on x's device, and ``0 <= step < N`` a Python int."""
    check_tensor(kernel, "times", times, shape=(None,), dtype=torch.float32, device=x.device)
    num_steps = times.shape[0] - 1
    check_tensor(kernel, "running", running, shape=(num_steps,), dtype=torch.float32, device=x.device)
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < num_steps:
        raise ValueError(f"{kernel}: step is {step!r}, expected a Python int in [0, {num_steps}) for "
                         f"{num_steps} sampling steps")


def step_output(kernel: str, x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """``out`` checked (float32 like x; may be x itself), or a new one."""
    if out is None:
        return torch.empty_like(x)
    check_tensor(kernel, "out", out, shape=tuple(x.shape), dtype=torch.float32, device=x.device)
    return out


def check_last_step_size(kernel: str, last_step_size: float) -> None:
    if isinstance(last_step_size, bool) or not isinstance(last_step_size, (int, float)) or \
            not 0.0 < last_step_size <= 1.0:
        raise ValueError(f"{kernel}: last_step_size is {last_step_size!r}, expected a float in (0, 1]")


def final_outputs(kernel: str, pred: torch.Tensor, x: torch.Tensor, tokens_out: torch.Tensor | None,
                  packed_out: torch.Tensor | None, tokens_dtype: torch.dtype | None, pack: bool,
                  sample_out: torch.Tensor | None, keep_sample: bool) -> FinalTokens:
    """The buffers ``sampler_final`` writes, checked or allocated: tokens always; packed words with ``pack`` or a
    ``packed_out`` (C a multiple of 32); the sample with ``keep_sample`` or a ``sample_out``; None otherwise."""
    shape = tuple(pred.shape)
    if tokens_out is None:
        dtype = pred.dtype if tokens_dtype is None else tokens_dtype
        if dtype not in FLOAT_DTYPES:
            raise ValueError(f"{kernel}: tokens_dtype is {dtype}, expected one of "
                             f"{', '.join(map(str, FLOAT_DTYPES))}")
        tokens_out = torch.empty(shape, dtype=dtype, device=x.device)
    else:
        check_tensor(kernel, "tokens_out", tokens_out, shape=shape, dtype=FLOAT_DTYPES, device=x.device)
    if pack or packed_out is not None:
        channels = shape[-1]
        if channels % BITS_PER_WORD:
            raise ValueError(f"{kernel}: packing needs a channel count that is a multiple of {BITS_PER_WORD}, "
                             f"got C = {channels}; pass pack=False and no packed_out")
        words_shape = (*shape[:-1], channels // BITS_PER_WORD)
        if packed_out is None:
            packed_out = torch.empty(words_shape, dtype=torch.int32, device=x.device)
        else:
            check_tensor(kernel, "packed_out", packed_out, shape=words_shape, dtype=torch.int32, device=x.device)
    if keep_sample or sample_out is not None:
        if sample_out is None:
            sample_out = torch.empty_like(x)
        else:
            check_tensor(kernel, "sample_out", sample_out, shape=tuple(x.shape), dtype=torch.float32,
                         device=x.device)
    return FinalTokens(tokens_out, packed_out, sample_out)
