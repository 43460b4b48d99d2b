"""The AR generator of the digits model: the runtime's own class-conditional backbone
(``bitdance_rt.reference.c2i_backbone.C2IBackbone``) and diffusion head (``bitdance_rt.reference.diffusion_head``),
trained with the release's objective (read off ``imagenet_gen/src/model_parallel.py``, ``diff_head_parallel.py``
and ``train_parallel.py`` of the BitDance release; written here from those facts):

- One teacher-forced pass per batch: ``[class tokens, P-1 query tokens, image tokens but the last P]`` through the
  backbone with the block-causal mask (causal over the first ``class_tokens - 1`` positions, then blocks of P); the
  last ``h·w`` hidden states plus ``pos_for_diff`` condition the head, P tokens (one patch) per head sample.
- Class labels are replaced by the null class with probability 0.1 (classifier-free guidance); input tokens are
  flipped with probability ``perturb · u`` (u uniform per element; the release's ``perturb_rate``).
- Head loss: x-prediction flow matching. ``t = sigmoid(N(P_mean, P_std))`` (logit-normal, -0.8 and 0.8),
  ``z = (1 - t)·noise + t·x``, velocities ``(x - z) / max(1 - t, 0.05)`` of the target and of the head's
  prediction, mean squared difference; each patch is repeated ``diff_batch_mul`` times with fresh t and noise.
- AdamW (betas 0.9, 0.95; weight decay 0.05 except embeddings, ``proj_in``, query tokens and 1-D parameters),
  gradient clipping at 1.0, linear warm-up then cosine decay, an EMA copy that is what gets saved.
- Initialisation as the release: linears and embeddings N(0, 0.02) with zero biases in the backbone; in the head
  Xavier-uniform linears, N(0, 0.02) time-embedding MLP, zero adaLN and zero output layer.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from bitdance_rt.reference.c2i_backbone import C2IBackbone, C2IConfig
from bitdance_rt.reference.diffusion_head import DiffusionHead, DiffusionHeadConfig
from bitdance_rt.reference.masks import block_causal_mask

LABEL_DROP = 0.1
T_MEAN, T_STD = -0.8, 0.8
MIN_ONE_MINUS_T = 0.05
NO_DECAY = ("proj_in", "cls_embedding", "query_token")


@dataclass
class Generator:
    backbone: C2IBackbone
    head: DiffusionHead

    def modules(self) -> nn.ModuleDict:
        return nn.ModuleDict({"backbone": self.backbone, "head": self.head})

    def release_state_dict(self) -> dict[str, torch.Tensor]:
        """The release's ``BitDance`` keys: the backbone's own, the head under ``head.net.``."""
        state = {k: v.detach().clone() for k, v in self.backbone.state_dict().items()}
        state.update({f"head.net.{k}": v.detach().clone() for k, v in self.head.state_dict().items()})
        return state


def build(cfg: C2IConfig, head_cfg: DiffusionHeadConfig) -> Generator:
    """Fresh modules, initialised as the release initialises them (global RNG: seed it first)."""
    backbone, head = C2IBackbone(cfg), DiffusionHead(head_cfg)
    for m in backbone.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
    if cfg.parallel > 1:
        nn.init.normal_(backbone.query_token, std=0.02)
    for m in head.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    for lin in (head.time_embed.mlp[0], head.time_embed.mlp[2]):
        nn.init.normal_(lin.weight, std=0.02)
    for lin in [*head.ada_ln_blocks, head.final_layer.ada_ln_modulation, head.final_layer.linear]:
        nn.init.zeros_(lin.weight)
        nn.init.zeros_(lin.bias)
    return Generator(backbone, head)


def perturb(tokens: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    """Flip each element with probability ``rate · u`` (u uniform per element), the release's token perturbation."""
    if rate <= 0:
        return tokens
    flips = torch.rand(tokens.shape, generator=generator) < rate * torch.rand(tokens.shape, generator=generator)
    return torch.where(flips, -tokens, tokens)


def flow_matching_loss(head: DiffusionHead, target: torch.Tensor, cond: torch.Tensor,
                       generator: torch.Generator) -> torch.Tensor:
    """target ``[N, P, C]`` clean tokens, cond ``[N, P, D]``: the release's x-prediction velocity loss."""
    t = torch.sigmoid(torch.randn(target.shape[0], generator=generator) * T_STD + T_MEAN)
    noise = torch.randn(target.shape, generator=generator)
    ti = t.view(-1, 1, 1)
    z = (1.0 - ti) * noise + ti * target
    scale = (1.0 - ti).clamp_min(MIN_ONE_MINUS_T)
    v = (target - z) / scale
    v_pred = (head(z, t, cond) - z) / scale
    return torch.mean((v - v_pred) ** 2)


def generator_loss(gen: Generator, tokens: torch.Tensor, labels: torch.Tensor, *, perturb_rate: float,
                   diff_batch_mul: int, rng: torch.Generator) -> torch.Tensor:
    """tokens ``[B, h·w, C]`` in generation (patch-raster) order, labels ``[B]``."""
    bb, cfg = gen.backbone, gen.backbone.cfg
    p, batch = cfg.parallel, tokens.shape[0]
    drop = torch.rand(batch, generator=rng) < LABEL_DROP
    labels = torch.where(drop, torch.full_like(labels, cfg.null_class), labels)
    inputs = perturb(tokens[:, :-p], perturb_rate, rng)
    x = torch.cat([bb.class_tokens(labels), bb.embed_tokens(inputs)], dim=1)
    mask = block_causal_mask(x.shape[1], cfg.causal_len, p)
    hidden = bb(x, mask, bb.new_cache(batch))
    cond = hidden[:, -cfg.num_tokens:] + bb.pos_for_diff.weight
    cond = cond.reshape(-1, p, cfg.dim).repeat(diff_batch_mul, 1, 1)
    target = tokens.reshape(-1, p, cfg.token_channels).repeat(diff_batch_mul, 1, 1)
    return flow_matching_loss(gen.head, target, cond, rng)


def _optimizer(gen: Generator, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, param in gen.modules().named_parameters():
        (no_decay if param.ndim < 2 or any(k in name for k in NO_DECAY) else decay).append(param)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))


def train_generator(gen: Generator, tokens: torch.Tensor, labels: torch.Tensor, *, steps: int, batch: int,
                    lr: float, min_lr: float, warmup: int, weight_decay: float, ema_decay: float,
                    perturb_rate: float, diff_batch_mul: int, rng: torch.Generator, log=print) -> Generator:
    """Train ``gen`` in place on ``tokens [N, h·w, C]`` / ``labels [N]``; returns the EMA copy (eval mode)."""
    ema = copy.deepcopy(gen)
    for p in ema.modules().parameters():
        p.requires_grad_(False)
    params = list(gen.modules().parameters())
    ema_params = list(ema.modules().parameters())
    opt = _optimizer(gen, lr, weight_decay)
    start, running = time.perf_counter(), 0.0
    for step in range(steps):
        if step < warmup:
            cur = lr * (step + 1) / warmup
        else:
            cur = min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
        for group in opt.param_groups:
            group["lr"] = cur
        idx = torch.randint(0, tokens.shape[0], (batch,), generator=rng)
        loss = generator_loss(gen, tokens[idx], labels[idx], perturb_rate=perturb_rate,
                              diff_batch_mul=diff_batch_mul, rng=rng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        running += loss.item()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            log(f"generator step {step + 1}/{steps}: loss {running / ((step % 100) + 1):.4f} lr {cur:.2e} "
                f"({time.perf_counter() - start:.0f} s)")
            running = 0.0
    ema.backbone.eval()
    ema.head.eval()
    return ema
