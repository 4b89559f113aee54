"""Several processes, one model: the small amount of glue around PyTorch DDP.

``torchrun --nproc_per_node=K`` (or ``python -m torch.distributed.run``) starts K copies of
the training script and tells each one who it is through environment variables: ``RANK``
(0..K-1 over all machines), ``LOCAL_RANK`` (which GPU on this machine) and ``WORLD_SIZE``.
Each process trains on its own shard of every batch; PyTorch's
:class:`~torch.nn.parallel.DistributedDataParallel` averages the gradients across processes
during ``backward()`` so that all copies take the same optimizer step and stay identical.

Only rank 0 talks to the outside world (checkpoints, sample grids, logs). Backends: NCCL
between GPUs, Gloo between CPU processes (used by the tests).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    """Who this process is. A single-process run is ``DistInfo(0, 1, 0)``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True when more than one process trains (gradients must be synchronised)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and prints."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when the environment variables torchrun sets are present."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun prepared, if any.

    Returns ``(info, device)``; on CUDA the device becomes ``cuda:LOCAL_RANK`` so each
    process drives its own GPU. Without torchrun this is a no-op returning a single-process
    :class:`DistInfo`. Backend: ``nccl`` for CUDA, ``gloo`` otherwise.
    """
    if not launched_by_torchrun():
        return DistInfo(), device
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ValueError(f"multi-process training supports cuda and cpu, not {device.type}")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world, local), device


def cleanup_distributed() -> None:
    """Leave the process group (call once at the end of a torchrun job)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_gather_objects(obj, info: DistInfo) -> list:
    """Every rank's ``obj`` (picklable, small), in rank order; ``[obj]`` without DDP."""
    if not info.enabled:
        return [obj]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def parameters_in_sync(model: nn.Module, info: DistInfo) -> bool:
    """True when every rank holds bit-identical parameters (compared with ``torch.equal``).

    All ranks must call it. Gathers one flat copy of the parameters from every process, so
    use it as an end-of-run check, not every step.
    """
    flat = torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])
    if not info.enabled:
        return True
    gathered = [torch.empty_like(flat) for _ in range(info.world_size)]
    dist.all_gather(gathered, flat)
    return all(torch.equal(gathered[0], g) for g in gathered[1:])


__all__ = [
    "DistInfo",
    "all_gather_objects",
    "cleanup_distributed",
    "init_distributed",
    "launched_by_torchrun",
    "parameters_in_sync",
]
