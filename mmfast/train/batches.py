"""In-memory data sets (dicts of tensors) cut into seeded, rank-sharded batches."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["Batch", "dataset_size", "take", "inputs_of", "epoch_order", "batch_indices",
           "derive_seed"]

#: A batch: the data set's keys ("video", "audio", "image", "mask", "label", "index", ...).
Batch = dict[str, Tensor]


def dataset_size(data: Mapping[str, Tensor]) -> int:
    """N, checked to be the same for every tensor of ``data``."""
    if "label" not in data or "mask" not in data:
        raise ValueError(f"data needs 'label' and 'mask' entries, got keys {sorted(data)}")
    sizes = {k: v.shape[0] for k, v in data.items() if isinstance(v, Tensor)}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"every tensor of data must have the same first dimension, got {sizes}")
    return next(iter(sizes.values()))


def take(data: Mapping[str, Tensor], index: Tensor, device: torch.device) -> Batch:
    """Rows ``index`` of every tensor, moved to ``device``."""
    return {k: v[index.to(v.device)].to(device, non_blocking=True)
            for k, v in data.items() if isinstance(v, Tensor)}


def inputs_of(batch: Mapping[str, Tensor], modalities: Sequence[str]) -> dict[str, Tensor]:
    """The per-modality input tensors of a batch, in ``modalities`` order."""
    missing = [m for m in modalities if m not in batch]
    if missing:
        raise ValueError(f"batch lacks modalities {missing}; it has {sorted(batch)}")
    return {m: batch[m] for m in modalities}


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (SplitMix64 mixing), so (seed, stage, epoch, step) streams
    never overlap and need no global RNG state (a resumed run draws the same numbers)."""
    x = 0x9E3779B97F4A7C15
    for part in parts:
        x = (x ^ (int(part) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


def epoch_order(n: int, seed: int, stage_index: int, epoch: int) -> Tensor:
    """The shuffled sample order of one epoch of one stage, a pure function of its arguments."""
    gen = torch.Generator().manual_seed(derive_seed(seed, stage_index, epoch))
    return torch.randperm(n, generator=gen)


def batch_indices(order: Tensor, batch_size: int, limit: int | None = None) -> Iterator[Tensor]:
    """Consecutive slices of ``order`` (the last one may be short); at most ``limit`` slices."""
    count = -(-order.numel() // batch_size)
    if limit is not None:
        count = min(count, limit)
    for i in range(count):
        yield order[i * batch_size:(i + 1) * batch_size]
