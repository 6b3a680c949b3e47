"""Data parallelism through torch.distributed, launched by ``torchrun``.

Under torchrun (WORLD_SIZE > 1) :func:`setup` joins the process group (gloo on CPU, nccl on
CUDA); every rank trains a DistributedDataParallel replica on its own shard of each epoch's
permutation. Without torchrun everything degrades to a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["DistContext", "setup", "shard_indices", "all_reduce_sums"]


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: rank, world size, and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP around ``model`` when distributed (trainable parameters only), else ``model``."""
        if not self.distributed:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def setup(device: torch.device) -> DistContext:
    """Join the torchrun process group if there is one; returns this process's context.

    ``device`` is the configured device; under torchrun a CUDA device becomes
    cuda:LOCAL_RANK so that each rank owns one GPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(0, 1, device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), device)


def shard_indices(order: Tensor, rank: int, world_size: int) -> Tensor:
    """This rank's share of ``order``: padded by wrap-around to a multiple of world_size, then
    every world_size-th element, so all ranks take the same number of steps (DDP needs it)."""
    if world_size <= 1:
        return order
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    n = order.numel()
    total = -(-n // world_size) * world_size
    padded = order.repeat(-(-total // max(n, 1)))[:total] if n else order
    return padded[rank::world_size]


def all_reduce_sums(values: dict[str, float], ctx: DistContext) -> dict[str, float]:
    """Sum each scalar over ranks (identity when not distributed)."""
    if not ctx.distributed or not values:
        return values
    keys = sorted(values)
    device = ctx.device if ctx.device.type == "cuda" else torch.device("cpu")
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))
