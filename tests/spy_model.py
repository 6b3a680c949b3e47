"""A four-class model that records what each forward call saw (inputs and mask), for tests of
the losses and augmentations that rewrite a batch before the model sees it."""

from __future__ import annotations

import torch
from torch import nn

from mmfast.nn.model import MultiModalOutput


class SpyModel(nn.Module):
    modalities = ("video", "audio", "image")

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(4))
        self.seen: list[tuple[dict[str, torch.Tensor], torch.Tensor]] = []

    def forward(self, inputs, mask):
        self.seen.append(({m: x.clone() for m, x in inputs.items()}, mask.clone()))
        return MultiModalOutput(self.w.expand(mask.shape[0], 4))
