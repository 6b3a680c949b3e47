"""How hard each modality of a dataset is: a small CNN per modality trained alone, evaluated
alone and in late fusion (sum of log-probabilities). This is how avdigits' corruptions were set
(each modality alone clearly below all three together); ``mmfast data check DIR`` runs it."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from mmfast.nn.model import MODALITIES


def _conv_trunk(in_channels: int, width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(),
    )


class ModalityCNN(nn.Module):
    """A 3-layer CNN for one modality: images (B, C, H, W), log-mels (B, 1, F, T), or clips
    (B, T, C, H, W), whose frames share the trunk and are max-pooled over time."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.trunk = _conv_trunk(in_channels, width)
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(2 * width, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 5:
            b, t = x.shape[:2]
            return self.head(self.trunk(x.flatten(0, 1)).view(b, t, -1).amax(1))
        return self.head(self.trunk(x))


def _train_one(x: Tensor, y: Tensor, num_classes: int, epochs: int, seed: int) -> ModalityCNN:
    torch.manual_seed(seed)
    in_channels = x.shape[-3]
    model = ModalityCNN(in_channels, num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(y), generator=gen).split(32):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def _log_probs(model: nn.Module, x: Tensor) -> Tensor:
    return torch.cat([model(chunk).log_softmax(-1) for chunk in x.split(256)])


def modality_accuracy(train: Mapping[str, Tensor], test: Mapping[str, Tensor],
                      num_classes: int, *, modalities: Sequence[str] = MODALITIES,
                      epochs: int = 15, seed: int = 0) -> dict[str, float]:
    """Test accuracy of a CNN per modality alone (rows where it is present) and of their late
    fusion over the present modalities ("all"). Inputs are batches as ``load_split`` gives."""
    ytr, yte = train["label"], test["label"]
    fused = torch.zeros(len(yte), num_classes)
    result: dict[str, float] = {}
    for m, modality in enumerate(modalities):
        keep = train["mask"][:, m]
        model = _train_one(train[modality][keep], ytr[keep], num_classes, epochs, seed + m)
        lp = _log_probs(model, test[modality])
        here = test["mask"][:, m]
        result[modality] = float((lp[here].argmax(-1) == yte[here]).float().mean())
        fused += lp * here[:, None]
    result["all"] = float((fused.argmax(-1) == yte).float().mean())
    return result


def measure_difficulty(root: str | os.PathLike, *, epochs: int = 15, seed: int = 0,
                       decode_device: str = "auto") -> dict[str, float]:
    """Load the train and test splits of a dataset and run :func:`modality_accuracy`."""
    from mmfast.data.loader import load_split
    from mmfast.data.manifest import read_manifest

    manifest = read_manifest(root)
    train = load_split(manifest, "train", decode_device=decode_device, device="cpu")
    test = load_split(manifest, "test", decode_device=decode_device, device="cpu")
    return modality_accuracy(train, test, manifest.num_classes, epochs=epochs, seed=seed)
