"""torchrun → process group, rank helpers, and DDP wrapping.

`torchrun --nproc_per_node N -m dlm train ...` sets RANK, WORLD_SIZE and LOCAL_RANK; without them
dlm runs as a single process. NCCL on GPUs, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_name: str) -> tuple[DistInfo, str]:
    """Join the process group when launched by torchrun. Returns (info, device name to use)."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo(), device_name
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    use_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return info, (f"cuda:{info.local_rank}" if use_cuda else "cpu")


def wrap_model(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """DistributedDataParallel when there is more than one process."""
    if not info.enabled:
        return model
    device_ids = [model.embed.weight.device.index] if model.embed.weight.is_cuda else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def all_reduce_sum(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
