"""Process-group set-up from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT)."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "launch_rank", "resolve_device", "setup_distributed", "cleanup_distributed", "all_reduce_mean",
           "broadcast_object"]


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def resolve_device(device: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """A device from "auto" (CUDA when present), "cpu", "cuda" (this process's cuda:LOCAL_RANK) or "cuda:N";
    a ValueError naming the choices for anything else, or for CUDA where none is visible."""
    if isinstance(device, torch.device):
        return device
    text = str(device).strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    kind, _, index = text.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N (N a GPU index)")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {device} was asked for but no CUDA device is visible; use --device cpu")
    n = int(index) if index else local_rank
    if n >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"numbered from 0; pick one of them")
    return torch.device("cuda", n)


def launch_rank() -> int:
    """This process's rank as torchrun set it (RANK), 0 outside torchrun."""
    return int(os.environ.get("RANK", "0"))


def setup_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (gloo on CPU, NCCL on CUDA); a single process otherwise.

    `device`: "auto" (CUDA when present), "cpu", "cuda" or "cuda:N". Each process takes cuda:LOCAL_RANK.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = launch_rank()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistInfo(rank, world, local_rank, local_world, dev)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        # Every rank reaches this point before any tears gloo down: a rank that destroyed its group while
        # another was still finishing aborted the latter ("terminate called without an active exception").
        with contextlib.suppress(RuntimeError):
            dist.barrier()
        dist.destroy_process_group()


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of `x` over the processes (identity for one)."""
    if dist.is_available() and dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return x


def broadcast_object(obj, src: int = 0):
    """`obj` from rank `src` on every rank (identity for one process)."""
    if dist.is_available() and dist.is_initialized():
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj
