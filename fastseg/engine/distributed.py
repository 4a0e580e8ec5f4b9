"""torch.distributed helpers: process-group set-up from torchrun's environment, rank queries, reductions.

``python -m torch.distributed.run --nproc-per-node N -m fastseg.train ...`` (torchrun) sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; multi-node runs add torchrun's ``--nnodes``,
``--node-rank`` and ``--rdzv-*`` arguments and nothing here changes. The group uses NCCL on CUDA and
gloo on CPU, with a timeout on every collective: a rank that dies makes the others raise (gloo: at once
when the peer's connection closes, else after ``timeout``; NCCL: the watchdog aborts after ``timeout``)
instead of waiting forever.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class DistributedContext:
    """Where this process runs: its global rank, the world size, its local rank and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True when the environment names a multi-process launch (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> DistributedContext:
    """Join the process group described by torchrun's environment (env://), or run alone without one.

    ``device``: "auto" (CUDA when available, else CPU), "cpu" or "cuda". Each rank takes GPU LOCAL_RANK.
    """
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch.cuda.is_available() is False")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    target = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if not launched_by_torchrun():
        return DistributedContext(device=target)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            init_method="env://",
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=target if use_cuda else None,
        )
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, target)


def shutdown_distributed() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def any_true(flag: torch.Tensor) -> torch.Tensor:
    """``flag`` (bool scalar tensor) OR-ed over ranks; unchanged without a process group."""
    if not is_distributed():
        return flag
    value = flag.to(torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value.bool()


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over ranks (a copy); ``value`` itself without a process group."""
    if not is_distributed():
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value / dist.get_world_size()


def gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` without a process group)."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier() -> None:
    if is_distributed():
        dist.barrier()
