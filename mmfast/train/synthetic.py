"""Tiny synthetic multi-modal data in the layout of ``mmfast.data.load_split``.

Each class has a fixed pattern per modality, a 2D grating with a class-specific frequency
vector (so small CNNs with global pooling can tell classes apart, as with real images); a
sample is its class's pattern scaled by a per-modality signal strength, plus Gaussian noise,
so every modality is informative but none is perfect. Used by tests and smoke runs (no files,
no network).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mmfast.nn.model import MODALITIES

__all__ = ["SMALL_SHAPES", "synthetic_split"]

#: Per-sample shapes close to the built-in data's, but smaller (fast tests).
SMALL_SHAPES: dict[str, tuple[int, ...]] = {
    "video": (4, 1, 16, 16), "audio": (1, 16, 20), "image": (1, 16, 16),
}


def synthetic_split(n: int, num_classes: int = 4, seed: int = 0,
                    shapes: Mapping[str, Sequence[int]] | None = None,
                    signal: Mapping[str, float] | None = None, missing_rate: float = 0.0,
                    noise: float = 1.0) -> dict[str, Tensor]:
    """A data dict of ``n`` samples: modality tensors, "mask", "label", "index".

    missing_rate: probability that a modality is absent (at least one kept; absent inputs
    are zeros, as loaders give them). The class patterns depend only on ``shapes`` and
    ``num_classes`` (not on ``seed``), so splits drawn with different seeds share them.
    """
    shapes = dict(shapes or SMALL_SHAPES)
    signal = {m: 1.0 for m in shapes} | dict(signal or {})
    patterns = {m: _gratings(num_classes, s) for m, s in shapes.items()}
    gen = torch.Generator().manual_seed(seed)
    label = torch.randint(num_classes, (n,), generator=gen)
    mask = torch.rand(n, len(shapes), generator=gen) >= missing_rate
    mask[torch.arange(n), torch.randint(len(shapes), (n,), generator=gen)] = True
    out: dict[str, Tensor] = {}
    for i, (m, s) in enumerate(shapes.items()):
        x = signal[m] * patterns[m][label] + noise * torch.randn(n, *s, generator=gen)
        out[m] = x * mask[:, i].view(-1, *([1] * len(s)))
    out.update(mask=mask, label=label, index=torch.arange(n))
    return out


def _gratings(num_classes: int, shape: Sequence[int]) -> Tensor:
    """(num_classes, *shape): cos(2 pi (f_y i / H + f_x j / W)), one frequency pair per class,
    the same over the leading (time, channel) dimensions."""
    h, w = shape[-2:]
    pairs = [(fy, fx) for fy in range(0, 4) for fx in range(-3, 4) if (fy, fx) > (0, 0)]
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(12345))
    if num_classes > len(pairs):
        raise ValueError(f"num_classes must be <= {len(pairs)}, got {num_classes}")
    i = torch.arange(h, dtype=torch.float32).view(h, 1) / h
    j = torch.arange(w, dtype=torch.float32).view(1, w) / w
    out = torch.stack([torch.cos(2 * torch.pi * (pairs[k][0] * i + pairs[k][1] * j))
                       for k in order[:num_classes].tolist()])
    return out.view(num_classes, *([1] * (len(shape) - 2)), h, w).expand(num_classes, *shape)


def modality_order(data: Mapping[str, Tensor]) -> tuple[str, ...]:
    """The modalities present in ``data``, in the canonical order."""
    return tuple(m for m in MODALITIES if m in data)
