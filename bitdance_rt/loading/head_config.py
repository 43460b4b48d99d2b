"""Consistency checks of a diffusion head's configuration, shared by both families' loaders."""

from __future__ import annotations

from ..errors import CheckpointError
from ..reference.diffusion_head import DiffusionHeadConfig


def check_parallel(parallel: int, source: str) -> None:
    side = int(round(parallel ** 0.5))
    if parallel < 1 or side * side != parallel:
        raise CheckpointError(f"{source}: P = {parallel} tokens per step is not a square number; next-patch "
                              "diffusion walks square patches (P = 1, 4, 16, 64).")


def check_head_config(cfg: DiffusionHeadConfig, parallel: int, source: str) -> None:
    check_parallel(parallel, source)
    if cfg.depth < 1 or cfg.num_adaln < 1:
        raise CheckpointError(f"{source}: the head needs at least one block and one adaLN linear "
                              f"(found depth {cfg.depth}, adaLN {cfg.num_adaln}).")
    every = cfg.adaln_every
    if cfg.depth % every or cfg.depth // every > cfg.num_adaln:
        raise CheckpointError(f"{source}: {cfg.depth} head blocks cannot share {cfg.num_adaln} adaLN linears "
                              "evenly (depth must be a multiple of depth // adaLN count).")
    if cfg.block_kind == "trans" and cfg.width % cfg.attn_head_dim:
        raise CheckpointError(f"{source}: head width {cfg.width} is not a multiple of its attention head size "
                              f"{cfg.attn_head_dim}.")
