"""The diffusion head's whole sampling loop for one AR step, on the engine's operations (``bitdance_rt.ops``).

Work hoisted out of the loop:
- per model and step count: the time embeddings ``time_embed(t)`` of all N running times and the final time
  (``[N + 1, D]``), and the times tables the sampler kernel reads;
- per AR step: ``cond_embed(c)`` (once, not once per sampling step);
- per model: all adaLN linears of the head and the final layer's modulation stacked into one matrix, so one GEMM
  per sampling step makes every block's scale/shift/gate.
Per sampling step (``sampling_step``): the condition ``silu(cond_embed + time_embed)`` in one kernel
(``time_condition``); ``input_projection``: the float32 sample cast, projected C -> D and stored once per guidance
half, in one kernel (both halves see the same x); the adaLN GEMM; the blocks through ``layernorm_modulate`` /
``patch_attention`` and the GEMMs of ``engine/linear.py``: ``linear``, ``linear_swiglu`` (w1) and
``linear_gated_residual`` (``attn.wo``, w2), whose SwiGLU and gated residual run in our GEMM's epilogue for 8-bit
weights and where ``ops.gemm_choice`` picks ours for float ones, else as the ``swiglu`` / ``gated_residual`` kernels
after cuBLAS; then ``final_layer_step``: the final layer (affine-free
LayerNorm, modulation, linear D -> C, ``2·sigmoid − 1`` for sigmoid-output models) for the conditional and
unconditional rows of every patch element and the sampler step (velocity, guidance, score, drift, noise) in one
kernel that writes the new sample. The last step is ``final_layer`` (one kernel, the prediction) then
``sampler_final`` (Euler step and sign). Shapes: conditioning ``[rows, P, C_cond]``, noise ``[N + 1, rows/m, P,
C]``. An 8-bit ``input_proj`` or ``final_layer.linear`` (``bitdance_rt.quantization`` never makes one: it keeps
the projections to and from the token channels float) falls back to the separate operations (GEMM and ``repeat``;
``layernorm_modulate``, the GEMM, ``sigmoid_output``, ``sampler_step``).

``sample_keyed`` is the same loop with the noise drawn from per-row Philox keys (``reference/philox_noise.py``). It
draws each step's noise with ``keyed_noise`` into a ``[rows/m, P, C]`` float32 tensor and runs the fused
``final_layer_step``, rather than keeping the old chain (final layer ops, then ``sampler_step_keyed``, whose CUDA
kernel draws the noise in registers). Why: on the Triton chain ``sampler_step_keyed`` already draws that noise
with torch before its kernel, so the fused path has the same draw and drops the final layer's separate launches.
On the "cuda" chain ``keyed_noise`` is the extension's kernel (the same Philox normals as the in-register draw:
both call ``keyed_normal_group`` of ``csrc/sampler_step.cu``); its launch plus the fused kernel replace three or
four (LayerNorm-modulate, GEMM, sigmoid, keyed step) for one extra write and read of a tensor the size of the
sample (at most 0.5 MiB, class-conditional batch 256: about 0.3 µs of HBM traffic, less than one launch).
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
        # the projections to and from the token channels: float for every model bitdance_rt.quantization makes (it
        # excludes them); the fused operations take float weights only, an 8-bit one runs the separate operations
        self.input_proj = weight_and_bias(head.input_proj)
        self.final_linear = weight_and_bias(head.final_layer.linear)
        self.fused_input = isinstance(self.input_proj[0], torch.Tensor)
        self.fused_final = isinstance(self.final_linear[0], torch.Tensor)
        self.dtype = head.time_embed.mlp[0].weight.dtype  # the model's float dtype (time_embed stays float)
        self.block_linears = [{name: weight_and_bias(m) for name, m in blk.named_modules() if name in BLOCK_LINEARS}
                              for blk in head.res_blocks]
        self._times: dict[int, StepTimes] = {}

    def step_times(self, num_steps: int) -> StepTimes:
        if num_steps not in self._times:
            device = self.head.time_embed.mlp[0].weight.device
            times = step_times(num_steps, self.cfg.time_shift, device)
            running = running_times(times)
            all_t = torch.cat([running, torch.full((1,), 1 - LAST_STEP_SIZE, device=device)])
            self._times[num_steps] = StepTimes(times, running, self.head.time_embed(all_t).to(self.dtype))
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

    def trunk(self, x_half: torch.Tensor, y: torch.Tensor, mult: int
              ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Input projection, the adaLN GEMM and the blocks for ``cat([x_half]*mult)``: the last block's output
        ``[mult·B·P, D]`` and the final layer's (scale, shift). x_half ``[B, P, C]`` float32, y
        ``[mult·B·P, D]``."""
        head, cfg = self.head, self.cfg
        b, p, _ = x_half.shape
        if self.fused_input:
            x = self.ops.input_projection(x_half, *self.input_proj, mult)
        else:  # an 8-bit input_proj (not made by bitdance_rt.quantization, which keeps it float)
            x = linear(self.ops, x_half.to(self.dtype), *self.input_proj).reshape(b * p, cfg.width)
            x = x.repeat(mult, 1) if mult > 1 else x.contiguous()
        block_mods, final_mods = self.modulations(y)
        for i, blk in enumerate(head.res_blocks):
            mod = block_mods[i // cfg.adaln_every]
            lin = self.block_linears[i]
            if cfg.block_kind == "trans":
                x = self._trans_block(blk, lin, x, mod, mult * b, p)
            else:
                scale, shift, gate = mod
                h = self.ops.layernorm_modulate(x, scale, shift, blk.norm.weight, blk.norm.bias, LN_EPS)
                x = linear_gated_residual(self.ops, x, linear_swiglu(self.ops, h, *lin["w1"]), *lin["w2"], gate)
        return x, final_mods

    def forward(self, x_half: torch.Tensor, y: torch.Tensor, mult: int) -> torch.Tensor:
        """The head's prediction ``[mult·B, P, C]`` for ``cat([x_half]*mult)``: x_half ``[B, P, C]`` float32,
        y ``[mult·B·P, D]``."""
        x, (f_scale, f_shift) = self.trunk(x_half, y, mult)
        b, p, c = x_half.shape
        if self.fused_final:
            pred = self.ops.final_layer(x, f_scale, f_shift, *self.final_linear, LN_EPS, self.cfg.sigmoid_output)
            return pred.reshape(mult * b, p, c)
        return self._unfused_final_layer(x, f_scale, f_shift).reshape(mult * b, p, c)

    def sampling_step(self, x_half: torch.Tensor, y: torch.Tensor, times: StepTimes, i: int,
                      cfg_scale: float | torch.Tensor, guided: bool, noise: torch.Tensor | None = None,
                      keys: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Sampling step i (of ``N``) in place on the sample ``x_half [B, P, C]`` float32: the head's pass and the
        Euler–Maruyama step, with ``noise [B, P, C]`` or the noise of sample ``i + 1`` of ``keys`` (one of them)."""
        mult = 2 if guided else 1
        x, (f_scale, f_shift) = self.trunk(x_half, y, mult)
        if self.fused_final:
            if noise is None:
                noise = self.ops.keyed_noise(*keys, i + 1, x_half.shape[1], x_half.shape[2])
            return self.ops.final_layer_step(x, f_scale, f_shift, *self.final_linear, LN_EPS,
                                             self.cfg.sigmoid_output, x_half, noise, times.times, times.running, i,
                                             cfg_scale, guided, out=x_half)
        pred = self._unfused_final_layer(x, f_scale, f_shift).reshape(mult * x_half.shape[0], *x_half.shape[1:])
        if noise is None:
            return self.ops.sampler_step_keyed(pred, x_half, times.times, times.running, i, cfg_scale, guided,
                                               *keys, out=x_half)
        return self.ops.sampler_step(pred, x_half, noise, times.times, times.running, i, cfg_scale, guided,
                                     out=x_half)

    def _unfused_final_layer(self, x: torch.Tensor, f_scale: torch.Tensor, f_shift: torch.Tensor) -> torch.Tensor:
        """The final layer as separate operations (for an 8-bit final linear): ``[rows, D] -> [rows, C]``."""
        h = self.ops.layernorm_modulate(x, f_scale, f_shift, None, None, LN_EPS)
        out = linear(self.ops, h, *self.final_linear)
        return self.ops.sigmoid_output(out, out=out) if self.cfg.sigmoid_output else out

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
        return self._loop(cond, noise[0].clone(), cfg_scale, guided, times, noise=noise)

    def sample_keyed(self, cond: torch.Tensor, keys: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                     cfg_scale: float | torch.Tensor, guided: bool, times: StepTimes) -> torch.Tensor:
        """As ``sample``, with the noise drawn in the loop from ``keys = (seeds int64, ar_steps int32,
        rows_in_request int32)``, one entry per conditional row (a batch's ``SlotBatch`` keys;
        ``reference/philox_noise.py`` defines the draw)."""
        p, channels = cond.shape[1], self.cfg.token_channels
        return self._loop(cond, self.ops.keyed_noise(*keys, 0, p, channels), cfg_scale, guided, times, keys=keys)

    def _loop(self, cond: torch.Tensor, x: torch.Tensor, cfg_scale: float | torch.Tensor, guided: bool,
              times: StepTimes, noise: torch.Tensor | None = None,
              keys: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The sampling loop from the start sample ``x [rows/m, P, C]``, with ``noise`` (entry i + 1 for step i) or
        ``keys`` (``sampling_step``)."""
        mult = 2 if guided else 1
        rows, p, _ = cond.shape
        c_emb = linear(self.ops, cond.to(self.dtype), *self.cond_embed).reshape(rows * p, self.cfg.width)
        num_steps = times.times.shape[0] - 1
        y = torch.empty_like(c_emb)
        for i in range(num_steps):
            self.ops.time_condition(c_emb, times.embeddings[i], out=y)
            x = self.sampling_step(x, y, times, i, cfg_scale, guided, None if noise is None else noise[i + 1], keys)
        self.ops.time_condition(c_emb, times.embeddings[num_steps], out=y)
        pred = self.forward(x, y, mult)
        return self.ops.sampler_final(pred, x, cfg_scale, guided).tokens
