"""Batches as dicts of tensors, assembled the same way by the DALI and reference loaders."""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence

import torch
from torch import Tensor

from mmfast.data.arrays import finish_array
from mmfast.data.finish import finish_log_mel, finish_pixels
from mmfast.data.specs import DataSpec


def make_batch(raw: Mapping[str, Tensor], present: Tensor, label: Tensor, index: Tensor,
               modalities: Sequence[str], spec: DataSpec, device: torch.device,
               array_modalities: Container[str] = ()) -> dict[str, Tensor]:
    """Finish decoded arrays (uint8 HWC pixels, log-mel dB, or ``.npy`` samples for
    ``array_modalities``) into model inputs on ``device`` and zero the rows of absent
    modalities (``present`` bool (B, M), columns in ``modalities`` order), so a stand-in
    decoded for a missing file never leaks into a batch."""
    present = present.to(device)
    batch: dict[str, Tensor] = {}
    for m, modality in enumerate(modalities):
        x = raw[modality].to(device, non_blocking=True)
        if modality in array_modalities:
            x = finish_array(x, modality, spec)
        elif modality == "audio":
            x = finish_log_mel(x, spec.audio.cutoff_db)
        else:
            x = finish_pixels(x, getattr(spec, modality).channels)
        batch[modality] = x.mul_(present[:, m].view(-1, *[1] * (x.dim() - 1)))
    batch["mask"] = present
    batch["label"] = label.to(device, torch.int64)
    batch["index"] = index.to(device, torch.int64)
    return batch


def collate(batches: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Concatenate batches key by key (same keys in every batch)."""
    if not batches:
        raise ValueError("batches: expected at least one batch, got none")
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def empty_batch(modalities: Sequence[str], spec: DataSpec, device: torch.device
                ) -> dict[str, Tensor]:
    """A batch with zero rows (what an empty split loads as)."""
    batch = {m: torch.zeros((0, *spec.shape(m)), device=device) for m in modalities}
    batch["mask"] = torch.zeros((0, len(modalities)), dtype=torch.bool, device=device)
    batch["label"] = torch.zeros(0, dtype=torch.int64, device=device)
    batch["index"] = torch.zeros(0, dtype=torch.int64, device=device)
    return batch
