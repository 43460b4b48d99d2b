"""The diffusion head's whole sampling loop for one AR step, on the engine's operations (``bitdance_rt.ops``).

Work hoisted out of the loop:
- per model and step count: the time embeddings ``time_embed(t)`` of all N running times and the final time
  (``[N + 1, D]``), and the times tables the sampler kernel reads;
- per AR step: ``cond_embed(c)`` (once, not once per sampling step);
- per model: all adaLN linears of the head and the final layer's modulation stacked into one matrix, so one GEMM
  per sampling step makes every block's scale/shift/gate.
Per sampling step: the condition ``silu(cond_embed + time_embed)`` in one kernel (``time_condition``),
``input_proj`` of the conditional half only (both halves see the same x), the blocks through
``layernorm_modulate`` / ``patch_attention`` / ``gated_residual`` / ``swiglu`` with ``linear.linear`` for the GEMMs
(F.linear, or the ``quantized_linear`` operation for 8-bit weights), the final layer (``2·sigmoid − 1`` in one
kernel, ``sigmoid_output``, for sigmoid-output models), then ``sampler_step`` (velocity, guidance, score, drift,
noise) in one kernel; the last step is
``sampler_final`` (Euler step and sign). Shapes: conditioning ``[rows, P, C_cond]``, noise ``[N + 1, rows/m, P, C]``.
``sample_keyed`` is the same loop with the noise drawn from per-row Philox keys (``sampler_step_keyed``: in the
CUDA kernel's registers on the "cuda" chain), so no noise tensor is staged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..ops import OpSet
from .linear import linear, linear_gated_residual, linear_swiglu, weight_and_bias
from ..reference.diffusion_head import LN_EPS, DiffusionHead
from ..reference.sampler import LAST_STEP_SIZE, running_times, step_times


# the GEMMs of a head block, by module name (a block has the ones of its kind)
BLOCK_LINEARS = ("attn.wqkv", "attn.wo", "w1", "w2", "mlp.0", "mlp.2")


@dataclass
class StepTimes:
    """Everything that depends only on the step count: times, running times, time embeddings ``[N + 1, D]``."""
    times: torch.Tensor
    running: torch.Tensor
    embeddings: torch.Tensor


class FusedHead:
    def __init__(self, head: DiffusionHead, ops: OpSet):
        self.head, self.ops = head, ops
        cfg = head.cfg
        self.cfg = cfg
        self.mods_per_block = 6 if cfg.block_kind == "trans" else 3
        self.adaln_weight, self.adaln_bias = head.adaln_weight, head.adaln_bias  # fused at load
        # every other GEMM's (weight, bias), float or 8-bit (``linear.linear`` takes either), read once
        self.cond_embed = weight_and_bias(head.cond_embed)
        self.block_linears = [{name: weight_and_bias(m) for name, m in blk.named_modules() if name in BLOCK_LINEARS}
                              for blk in head.res_blocks]
        self._times: dict[int, StepTimes] = {}

    def step_times(self, num_steps: int) -> StepTimes:
        if num_steps not in self._times:
            w = self.head.final_layer.linear.weight
            times = step_times(num_steps, self.cfg.time_shift, w.device)
            running = running_times(times)
            all_t = torch.cat([running, torch.full((1,), 1 - LAST_STEP_SIZE, device=w.device)])
            self._times[num_steps] = StepTimes(times, running, self.head.time_embed(all_t).to(w.dtype))
        return self._times[num_steps]

    def modulations(self, y: torch.Tensor) -> tuple[list[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]]:
        """One GEMM for every adaLN linear: per adaLN linear its chunks, and the final layer's (scale, shift)."""
        d = self.cfg.width
        mods = linear(self.ops, y, self.adaln_weight, self.adaln_bias)  # [N, (n·k + 2)·D]
        per = self.mods_per_block * d
        blocks = [tuple(mods[:, k * per + j * d:k * per + (j + 1) * d] for j in range(self.mods_per_block))
                  for k in range(self.cfg.num_adaln)]
        base = self.cfg.num_adaln * per
        return blocks, (mods[:, base:base + d], mods[:, base + d:base + 2 * d])

    def forward(self, x_half: torch.Tensor, y: torch.Tensor, mult: int) -> torch.Tensor:
        """The head's prediction for ``cat([x_half]*mult)``: x_half ``[B, P, C]`` float32, y ``[mult·B·P, D]``."""
        head, cfg = self.head, self.cfg
        b, p, _ = x_half.shape
        dtype = head.input_proj.weight.dtype
        x = head.input_proj(x_half.to(dtype)).reshape(b * p, cfg.width)
        x = x.repeat(mult, 1) if mult > 1 else x.contiguous()
        block_mods, (f_scale, f_shift) = self.modulations(y)
        for i, blk in enumerate(head.res_blocks):
            mod = block_mods[i // cfg.adaln_every]
            lin = self.block_linears[i]
            if cfg.block_kind == "trans":
                x = self._trans_block(blk, lin, x, mod, mult * b, p)
            else:
                scale, shift, gate = mod
                h = self.ops.layernorm_modulate(x, scale, shift, blk.norm.weight, blk.norm.bias, LN_EPS)
                x = linear_gated_residual(self.ops, x, linear_swiglu(self.ops, h, *lin["w1"]), *lin["w2"], gate)
        h = self.ops.layernorm_modulate(x, f_scale, f_shift, None, None, LN_EPS)
        out = head.final_layer.linear(h).reshape(mult * b, p, cfg.token_channels)
        return self.ops.sigmoid_output(out, out=out) if cfg.sigmoid_output else out

    def _linear(self, x: torch.Tensor, weight_bias) -> torch.Tensor:
        return linear(self.ops, x, *weight_bias)

    def _trans_block(self, blk, lin: dict, x: torch.Tensor, mod, rows: int, p: int) -> torch.Tensor:
        cfg = self.cfg
        scale1, shift1, gate1, scale2, shift2, gate2 = mod
        h = self.ops.layernorm_modulate(x, scale1, shift1, blk.norm1.weight, blk.norm1.bias, LN_EPS)
        qkv = self._linear(h, lin["attn.wqkv"]).reshape(rows, p, 3 * cfg.width)
        att = self.ops.patch_attention(qkv, cfg.attn_head_dim).reshape(rows * p, cfg.width)
        x = linear_gated_residual(self.ops, x, att, *lin["attn.wo"], gate1)
        h = self.ops.layernorm_modulate(x, scale2, shift2, blk.norm2.weight, blk.norm2.bias, LN_EPS)
        if cfg.use_swiglu:
            return linear_gated_residual(self.ops, x, linear_swiglu(self.ops, h, *lin["w1"]), *lin["w2"], gate2)
        return linear_gated_residual(self.ops, x, F.silu(self._linear(h, lin["mlp.0"])), *lin["mlp.2"], gate2)

    def sample(self, cond: torch.Tensor, noise: torch.Tensor, cfg_scale: float | torch.Tensor, guided: bool,
               times: StepTimes) -> torch.Tensor:
        """Tokens ``[rows, P, C]`` (sign of the final sample, both halves equal when guided) for conditioning
        ``cond [rows, P, C_cond]`` and noise ``[N + 1, rows/m, P, C]`` (entry 0: the start sample). ``cfg_scale``:
        a float, or a float32 device tensor of one scale or one per conditional row ``[rows/m]``."""
        def step(pred: torch.Tensor, x: torch.Tensor, i: int) -> torch.Tensor:
            return self.ops.sampler_step(pred, x, noise[i + 1], times.times, times.running, i, cfg_scale, guided,
                                         out=x)
        return self._loop(cond, noise[0].clone(), step, cfg_scale, guided, times)

    def sample_keyed(self, cond: torch.Tensor, keys: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                     cfg_scale: float | torch.Tensor, guided: bool, times: StepTimes) -> torch.Tensor:
        """As ``sample``, with the noise drawn in the loop from ``keys = (seeds int64, ar_steps int32,
        rows_in_request int32)``, one entry per conditional row (``engine/request_noise.py``)."""
        p, channels = cond.shape[1], self.cfg.token_channels

        def step(pred: torch.Tensor, x: torch.Tensor, i: int) -> torch.Tensor:
            return self.ops.sampler_step_keyed(pred, x, times.times, times.running, i, cfg_scale, guided, *keys,
                                               out=x)
        return self._loop(cond, self.ops.keyed_noise(*keys, 0, p, channels), step, cfg_scale, guided, times)

    def _loop(self, cond: torch.Tensor, x: torch.Tensor, step, cfg_scale: float | torch.Tensor, guided: bool,
              times: StepTimes) -> torch.Tensor:
        """The sampling loop from the start sample ``x [rows/m, P, C]``; ``step(pred, x, i)`` is sampling step i."""
        mult = 2 if guided else 1
        rows, p, _ = cond.shape
        dtype = self.head.input_proj.weight.dtype
        c_emb = linear(self.ops, cond.to(dtype), *self.cond_embed).reshape(rows * p, self.cfg.width)
        num_steps = times.times.shape[0] - 1
        y = torch.empty_like(c_emb)
        for i in range(num_steps):
            self.ops.time_condition(c_emb, times.embeddings[i], out=y)
            x = step(self.forward(x, y, mult), x, i)
        self.ops.time_condition(c_emb, times.embeddings[num_steps], out=y)
        pred = self.forward(x, y, mult)
        return self.ops.sampler_final(pred, x, cfg_scale, guided).tokens
