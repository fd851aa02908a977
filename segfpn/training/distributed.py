"""Process-group set-up under ``torchrun`` and the few collectives the trainer needs.

``torchrun --nproc_per_node=N`` (``python -m torch.distributed.run``) sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE`` and the rendezvous address; this module
reads them, picks NCCL for CUDA and gloo for CPU, and gives each process ``cuda:LOCAL_RANK``.
Without those variables everything runs in one process and the collectives are no-ops.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto", *, timeout_minutes: float = 30.0) -> DistContext:
    """Read the torchrun environment, initialise the process group when there are several
    processes, and choose this process's device ("auto": CUDA when available)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was asked for but CUDA is not available; use device: cpu")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes),
                                **({"device_id": dev} if dev.type == "cuda" else {}))
        logger.info("process group: rank %d of %d (%s), device %s", rank, world_size, backend, dev)
    if dev.type == "cpu" and world_size > 1 and "OMP_NUM_THREADS" not in os.environ:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over the processes of a float tensor (a NaN on any process makes the mean NaN)."""
    if dist.is_available() and dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= dist.get_world_size()
    return values


def all_gather_object(obj) -> list:
    """``obj`` of every process, by rank (a one-element list without a process group)."""
    if dist.is_available() and dist.is_initialized():
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def broadcast_object(obj, src: int = 0):
    if dist.is_available() and dist.is_initialized():
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj
