"""Process-group set-up for ``torchrun`` (DDP; FSDP2 as an option) and small collective helpers.

Launched plainly, everything here is a no-op (world size 1). Under ``torchrun`` the
environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) selects the group: nccl when
CUDA is available, gloo otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group if launched by torchrun; pick the device (cuda:LOCAL_RANK or cpu)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    dev = torch.device(f"cuda:{local}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def wrap_model(module: nn.Module, info: DistInfo, strategy: str = "ddp") -> nn.Module:
    """DDP (default) or FSDP2 (``fully_shard`` per transformer block, then the root)."""
    if not info.enabled:
        return module
    if strategy == "ddp":
        ids = [info.device.index] if info.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        from ..attention import Block
        for sub in module.modules():
            if isinstance(sub, Block):
                fully_shard(sub)
        fully_shard(module)
        return module
    raise ValueError(f"unknown distributed strategy {strategy!r} (ddp or fsdp)")


def full_state(wrapped: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Unsharded CPU copies of the model's and the optimizer's state, whatever the wrapping
    (none, DDP or FSDP2). A collective under FSDP: every rank must call it. Model keys are the
    pretraining model's own (the objective wrapper's ``model.`` prefix is removed)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd, optim_sd = get_state_dict(_unwrap(wrapped), optimizer, options=opts)
    return {k.removeprefix("model."): v for k, v in model_sd.items()}, optim_sd


def load_optimizer_state(wrapped: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Inverse of :func:`full_state` for the optimizer (model weights are loaded before wrapping)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(_unwrap(wrapped), optimizer, state, options=StateDictOptions(full_state_dict=True))


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over ranks (returns it unchanged when not distributed)."""
    if info.enabled:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
