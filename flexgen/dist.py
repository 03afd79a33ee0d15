"""torch.distributed in a few helpers, safe to call without a process group (one process = rank 0 of 1).

Under `torchrun` (RANK / WORLD_SIZE / LOCAL_RANK set, WORLD_SIZE > 1) `init()` joins the group: NCCL on GPUs,
gloo on CPUs. The same command without torchrun runs on one device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Env:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device: str | None = None) -> Env:
    """Join the process group if launched by torchrun; pick this rank's device (cuda:LOCAL_RANK, else cpu)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = parse_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
    return Env(rank, world, local_rank, dev)


def parse_device(device: str | None, local_rank: int | None = None) -> torch.device:
    """`--device` as a torch device: cpu, cuda (this rank's GPU: cuda:LOCAL_RANK) or cuda:N, by default this rank's
    GPU where there is one, else the CPU; one clear error for anything else or for a GPU this machine lacks."""
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(f"cuda:{local_rank}" if device == "cuda" else device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device!r}: expected cpu, cuda (this rank's GPU) or cuda:N") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or dev.index >= torch.cuda.device_count()):
        raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s) visible "
                         "to torch (torch.cuda.is_available() is "
                         f"{torch.cuda.is_available()}); use --device cpu")
    return dev


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of x over ranks (x itself on one process)."""
    if not is_distributed():
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / dist.get_world_size()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
