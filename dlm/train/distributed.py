"""torchrun → process group, rank helpers, and model wrapping: DDP, or FSDP2 (`fully_shard`).

`torchrun --nproc_per_node N -m dlm train ...` sets RANK, WORLD_SIZE and LOCAL_RANK; without them
dlm runs as a single process. NCCL on GPUs, gloo on CPU.
"""

from __future__ import annotations

import contextlib
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


def shard_model(model: torch.nn.Module) -> None:
    """FSDP2, in place: each block is its own unit (gathered just in time), then the rest."""
    from torch.distributed.fsdp import fully_shard

    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)


def wrap_model(model: torch.nn.Module, info: DistInfo, fsdp: bool = False) -> torch.nn.Module:
    """DistributedDataParallel, or FSDP2 with `fsdp`, when there is more than one process."""
    if not info.enabled:
        return model
    if fsdp:
        shard_model(model)
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


@contextlib.contextmanager
def gradient_sync(wrapped: torch.nn.Module, enabled: bool):
    """Skip the gradient all-reduce (DDP) or reduce-scatter (FSDP2) inside, when not `enabled`."""
    if enabled:
        yield
    elif hasattr(wrapped, "no_sync"):  # DDP
        with wrapped.no_sync():
            yield
    else:  # FSDP2
        wrapped.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            wrapped.set_requires_gradient_sync(True)


def full_state_dicts(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> tuple[dict, dict | None]:
    """Unsharded model (and optimizer) state of an FSDP2 model: a collective on every rank; the
    tensors land on rank 0, in CPU memory."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    optim = get_optimizer_state_dict(model, optimizer, options=options) if optimizer is not None else None
    return weights, optim


def load_full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def optimizer_state_by_name(optimizer: torch.optim.Optimizer, model: torch.nn.Module, state: dict) -> dict:
    """A torch-format optimizer state (params as indices) keyed by parameter names instead,
    the format FSDP2's full state dicts use. Indices follow the optimizer's own param groups."""
    names = {id(p): n for n, p in model.named_parameters()}
    by_index = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    groups = [{**g, "params": [by_index[i] for i in g["params"]]} for g in state["param_groups"]]
    return {"state": {by_index[i]: v for i, v in state["state"].items()}, "param_groups": groups}


def optimizer_state_by_index(state: dict) -> dict:
    """The inverse: a name-keyed (FSDP2 full) optimizer state in torch's index format."""
    order = [name for group in state["param_groups"] for name in group["params"]]
    index = {name: i for i, name in enumerate(order)}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]]
    return {"state": {index[n]: v for n, v in state["state"].items()}, "param_groups": groups}
