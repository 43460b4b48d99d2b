"""This process's place in a sampling job: rank, world size and device, from the variables ``torchrun`` sets
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``). With more than one rank it joins the process group (NCCL when the ranks
run on CUDA devices, gloo on the CPU) with the run's timeout on every collective, and gives each rank its own device
(``cuda:LOCAL_RANK``). A process started without ``torchrun`` is a job of one rank. A process group the caller
already initialized is used as it is (and left open)."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import InvalidRequestError


@dataclass
class RankContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None        # the process group's backend; None for a job of one rank
    owns_group: bool = False          # this module initialized the group (and destroys it at the end)

    def broadcast(self, obj, src: int = 0):
        """``obj`` of rank ``src`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def all_gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self, clean: bool) -> None:
        """Leave the group this module joined; after a failure it is left to the process's exit (tearing down a
        group whose peers are gone can block)."""
        if self.owns_group and clean and dist.is_initialized():
            dist.destroy_process_group()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise InvalidRequestError(f"environment variable {name}={value!r} is not an integer (torchrun sets it).")\
            from None


def requested_device_type(device: str | None) -> str:
    """``cuda`` or ``cpu``: the device kind the ranks run on (the default is CUDA when present)."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return torch.device(device).type
    except (RuntimeError, TypeError):
        raise InvalidRequestError(f"--device {device!r} is not a device name (use cpu, cuda or cuda:N).",
                                  param="device") from None


def join_job(device_type: str, timeout_s: float) -> RankContext:
    """The rank context of this process; initializes the process group under ``torchrun``."""
    if dist.is_available() and dist.is_initialized():
        return RankContext(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0), dist.get_backend(),
                           owns_group=False)
    world = _env_int("WORLD_SIZE", 1)
    if world == 1:
        return RankContext()
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    backend = "nccl" if device_type == "cuda" else "gloo"
    options = {"timeout": datetime.timedelta(seconds=timeout_s)}
    if backend == "nccl":
        if local_rank >= torch.cuda.device_count():
            raise InvalidRequestError(f"rank {rank} has LOCAL_RANK {local_rank} but this machine has "
                                      f"{torch.cuda.device_count()} CUDA device(s); start at most that many "
                                      "processes per node (torchrun --nproc-per-node).")
        torch.cuda.set_device(local_rank)
        options["device_id"] = torch.device("cuda", local_rank)
    dist.init_process_group(backend=backend, rank=rank, world_size=world, **options)
    return RankContext(rank, world, local_rank, backend, owns_group=True)


def rank_device(device: str | None, ctx: RankContext) -> str | None:
    """The device of this rank: as asked in a job of one rank; ``cuda:LOCAL_RANK`` (or the CPU) with more."""
    if ctx.world == 1:
        return device
    kind = requested_device_type(device)
    if kind == "cuda":
        if device is not None and torch.device(device).index is not None:
            raise InvalidRequestError(f"--device {device}: with {ctx.world} ranks each rank uses cuda:LOCAL_RANK; "
                                      "pass --device cuda (or leave it out) and choose GPUs with "
                                      "CUDA_VISIBLE_DEVICES.", param="device")
        return f"cuda:{ctx.local_rank}"
    return "cpu"
