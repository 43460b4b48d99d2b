"""Quantized against float weights on the tiny random-weight models (reference math, CPU, float32): per backbone
layer the relative error of the hidden states, and the bit agreement of the sampled tokens, under teacher forcing
(both models are fed the float model's tokens; both samplers get the same keyed noise). Printed, not a gate.

    PYTHONPATH=. python bench/quantized_vs_float.py [--ar-steps 4] [--steps 4]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from bitdance_rt.families.t2i_reference_loop import RowGroup
from bitdance_rt.reference.philox_noise import keyed_normal
from bitdance_rt.reference.sampler import sample_patch
from bitdance_rt.reference.t2i_embeddings import t2i_position_table
from bitdance_rt.request import ImageRequest, resolve_request
from bitdance_rt.runtime import Runtime
from bitdance_rt.tiny_models import write_tiny_t2i



def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def layer_outputs(model) -> tuple[list[torch.Tensor], list]:
    """Forward hooks recording every backbone layer's output (the hidden states after the layer)."""
    seen: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda m, i, o: seen.append((o[0] if isinstance(o, tuple) else o).clone()))
             for layer in model.backbone.layers]
    return seen, hooks


def run(model, ids: list[list[int]], forced: list[torch.Tensor] | None, ar_steps: int, steps: int, guidance: float,
        pos: torch.Tensor):
    """Prefill plus ``ar_steps`` teacher-forced steps; returns (per-layer outputs of each pass, tokens per step)."""
    p, c = model.parallel, model.head_config.token_channels
    seen, hooks = layer_outputs(model)
    group, uncond = RowGroup(ids[0], 1), RowGroup(ids[1], 1)
    per_pass, tokens = [], []
    hidden = torch.cat([group.prefill(model, len(ids[0]) + ar_steps * p),
                        uncond.prefill(model, len(ids[1]) + ar_steps * p)])
    per_pass.append(list(seen)); seen.clear()
    for k in range(ar_steps):
        cond = hidden + pos[k * p:(k + 1) * p]
        index = iter(range(10 ** 6))
        noise = lambda shape: keyed_normal(torch.tensor([7]), torch.tensor([k], dtype=torch.int32),  # noqa: E731
                                           torch.zeros(1, dtype=torch.int32), next(index), p, c)
        made = torch.sign(sample_patch(model.head, cond, c, guidance, steps, noise))
        tokens.append(made[:1])
        feed = made[:1] if forced is None else forced[k]
        embeds = model.projector(feed) + pos[k * p:(k + 1) * p]
        hidden = torch.cat([group.step(model, embeds), uncond.step(model, embeds)])
        per_pass.append(list(seen)); seen.clear()
    for h in hooks:
        h.remove()
    return per_pass, tokens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ar-steps", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--guidance", type=float, default=4.0)
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bitdance-quant-"))
    path = write_tiny_t2i(root / "t2i_64x", parallel_num=64, seed=0)
    models = {q: Runtime.from_pretrained(path, device="cpu", dtype=torch.float32, backend="reference",
                                         quantization=q).model for q in (None, "int8", "fp8")}
    base = models[None]
    family = Runtime.from_pretrained(path, device="cpu", dtype=torch.float32, backend="reference").family
    spec = resolve_request(ImageRequest(prompt="a red fox", negative_prompt="blurry", height=512, width=512,
                                        num_sampling_steps=a.steps, guidance_scale=a.guidance), family)
    rows = family.placement(spec).rows  # conditional and unconditional prompt rows
    pos = t2i_position_table(32, 32, base.backbone_config.hidden_size, 8)
    with torch.no_grad():
        float_passes, float_tokens = run(base, rows, None, a.ar_steps, a.steps, a.guidance, pos)
        print(f"tiny T2I P=64 (hidden {base.backbone_config.hidden_size}, {len(base.backbone.layers)} layers), "
              f"float32, {a.ar_steps} AR steps x {a.steps} sampling steps, guidance {a.guidance}, teacher-forced")
        for q in ("int8", "fp8"):
            passes, tokens = run(models[q], rows, float_tokens, a.ar_steps, a.steps, a.guidance, pos)
            per_layer = [max(rel(pq[i], pf[i]) for pq, pf in zip(passes, float_passes))
                         for i in range(len(base.backbone.layers))]
            bits = [(t == f).double().mean().item() for t, f in zip(tokens, float_tokens)]
            print(f"{q}: hidden rel. error per layer (max over passes): "
                  + ", ".join(f"{e:.2e}" for e in per_layer))
            print(f"{q}: token bit agreement per AR step: " + ", ".join(f"{b * 100:.2f}%" for b in bits)
                  + f"; mean {sum(bits) / len(bits) * 100:.2f}%")


if __name__ == "__main__":
    main()
