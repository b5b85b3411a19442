"""Process-group set-up for ``torchrun`` (DDP; FSDP2 as an option) and small collective helpers.

Launched plainly, everything here is a no-op (world size 1). Under ``torchrun`` the
environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) selects the group: nccl when
CUDA is available, gloo otherwise.

Every collective the trainer issues goes through the helpers here, and they run it on tensors of
``DistInfo.device``: NCCL serves CUDA tensors only ("No backend type associated with device type
cpu"), so a CPU flag handed to an NCCL group would kill the run at its first step. We keep one
backend per run and move the (few, small) host values to the device, rather than creating the
group as "cpu:gloo,cuda:nccl": a single communicator orders every collective on one stream, needs
no second rendezvous over TCP, and the values reduced (loss sums, flags) are on the device anyway.
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
    grouped: bool | None = None  # in a process group; None: when world_size > 1 (torchrun sets it at any size)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Collectives and model wrapping on: several processes, or one launched by torchrun (so that
        ``torchrun --nproc_per_node=1`` exercises every collective on one GPU)."""
        return self.world_size > 1 if self.grouped is None else self.grouped


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group if launched by torchrun (at any world size); pick the device
    (cuda:LOCAL_RANK or cpu)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    grouped = world > 1 or "TORCHELASTIC_RUN_ID" in os.environ
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    dev = torch.device(f"cuda:{local}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if grouped and not dist.is_initialized():
        # device_id binds the NCCL communicator to this rank's GPU (no guessing from the current device)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev, grouped=grouped)


def wrap_model(module: nn.Module, info: DistInfo, strategy: str = "ddp", bf16: bool = False) -> nn.Module:
    """DDP (default) or FSDP2 (``fully_shard`` per transformer block, then the root).

    Under FSDP2 with ``bf16`` the parameters are all-gathered in bf16 and gradients reduce-scattered
    in fp32 (``MixedPrecisionPolicy``): half the gather traffic, the optimizer still steps fp32 shards."""
    if not info.enabled:
        return module
    if strategy == "ddp":
        ids = [info.device.index] if info.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)
    if strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        from ..attention import Block
        mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16
              else MixedPrecisionPolicy())
        for sub in module.modules():
            if isinstance(sub, Block):
                fully_shard(sub, mp_policy=mp)
        fully_shard(module, mp_policy=mp)
        return module
    raise ValueError(f"unknown distributed strategy {strategy!r} (ddp or fsdp)")


def gradient_sync(wrapped: nn.Module, sync: bool):
    """A context for one micro-step of gradient accumulation: with ``sync`` False, gradients stay
    local (DDP ``no_sync``; FSDP2 ``set_requires_gradient_sync(False)``, which also skips the
    reduce-scatter), so only the last micro-step of an optimizer step communicates."""
    import contextlib

    if sync:
        return contextlib.nullcontext()
    if isinstance(wrapped, nn.parallel.DistributedDataParallel):
        return wrapped.no_sync()
    if hasattr(wrapped, "set_requires_gradient_sync"):  # an FSDP2 module
        @contextlib.contextmanager
        def fsdp_no_sync():
            wrapped.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                wrapped.set_requires_gradient_sync(True)
        return fsdp_no_sync()
    return contextlib.nullcontext()


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
    """Sum a tensor over ranks, on ``info.device`` (a copy; unchanged when not distributed)."""
    return _all_reduce(values, info, dist.ReduceOp.SUM if info.enabled else None)


def all_reduce_max(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Element-wise maximum over ranks, on ``info.device``."""
    return _all_reduce(values, info, dist.ReduceOp.MAX if info.enabled else None)


def _all_reduce(values: torch.Tensor, info: DistInfo, op) -> torch.Tensor:
    values = values.detach().to(info.device)
    if info.enabled:
        values = values.clone()
        dist.all_reduce(values, op=op)
    return values


def agree_bf16(bf16: bool, info: DistInfo) -> bool:
    """One precision for every rank: bf16 only if every rank chose it. Precision ``auto`` measures
    bf16 against fp32 in each process, and on a loaded machine two ranks can measure differently;
    ranks that disagree would all-gather bf16 and fp32 shards of different sizes and abort."""
    fp32_votes = all_reduce_max(torch.tensor([0 if bf16 else 1]), info)
    return bool(fp32_votes.item() == 0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
