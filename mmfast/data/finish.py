"""Last steps from decoded arrays to model inputs, in torch, shared by the DALI and reference
loaders (so the two differ only in decoding and resizing): colour to grey, channels first,
uint8 to [0, 1], log-mel dB to [0, 1]."""

from __future__ import annotations

import torch
from torch import Tensor

#: ITU-R BT.601 luma weights (what decoders use for Y): RGB -> grey.
_LUMA = (0.299, 0.587, 0.114)


def finish_pixels(rgb: Tensor, channels: int) -> Tensor:
    """uint8 (..., H, W, 3) -> float32 (..., C, H, W) in [0, 1], C = 1 (luma) or 3."""
    x = rgb.to(torch.float32).div_(255.0)
    if channels == 1:
        weights = torch.tensor(_LUMA, dtype=torch.float32, device=x.device)
        x = (x * weights).sum(dim=-1, keepdim=True).clamp_(0.0, 1.0)
    return x.movedim(-1, -3).contiguous()


def finish_log_mel(db: Tensor, cutoff_db: float) -> Tensor:
    """float (..., n_mels, frames) in dB re full scale, floored at -cutoff_db ->
    float32 (..., 1, n_mels, frames) in [0, 1] (0 = the floor, 1 = full scale)."""
    x = db.to(torch.float32).clamp(min=-cutoff_db, max=0.0).div_(cutoff_db).add_(1.0)
    return x.unsqueeze(-3).contiguous()
