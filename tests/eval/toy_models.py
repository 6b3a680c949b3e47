"""Tiny models whose behaviour is known by construction, for the evaluation tests."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmfast.nn.model import MODALITIES, MultiModalModel, MultiModalOutput

#: Per-modality input shapes (without the batch dimension), kept tiny.
SHAPES = {"video": (2, 1, 2, 2), "audio": (1, 3, 2), "image": (1, 2, 2)}


def make_inputs(n: int, seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.rand((n, *s), generator=g) for m, s in SHAPES.items()}


class LinearLate(MultiModalModel):
    """z^(m) = W_m flatten(x^(m)); fused h = sum_m mask_m z^(m) + b (CRMT's framework).

    ``fusion="mean"`` divides by the number of present modalities (late fusion) instead.
    """

    def __init__(self, num_classes: int = 3, seed: int = 0, fusion: str = "sum"):
        super().__init__()
        self.modalities = MODALITIES
        self.num_classes = num_classes
        self.fusion = fusion
        g = torch.Generator().manual_seed(seed)
        self.heads = nn.ParameterDict({
            m: nn.Parameter(torch.randn(num_classes, int(torch.tensor(s).prod()), generator=g))
            for m, s in SHAPES.items()
        })
        self.bias = nn.Parameter(0.1 * torch.randn(num_classes, generator=g))

    def modality_scores(self, inputs) -> Tensor:
        return torch.stack(
            [inputs[m].flatten(1) @ self.heads[m].t() for m in self.modalities], dim=1
        )

    def forward(self, inputs, mask) -> MultiModalOutput:
        z = self.modality_scores(inputs) * mask[..., None].to(torch.float32)
        fused = z.sum(1)
        if self.fusion == "mean":
            fused = fused / mask.sum(1, keepdim=True).clamp_min(1)
        return MultiModalOutput(logits=fused + self.bias, modality_logits=z)


class CertifiableLinear(LinearLate):
    """A :class:`LinearLate` with sum fusion that is a ``CertifiableModel``.

    The Lipschitz constant of x^(m) -> z^(m)_y - z^(m)_k is exactly ||W_m[y] - W_m[k]||_2, so
    its certified radii equal the distance to the decision boundary.
    """

    def __init__(self, num_classes: int = 3, seed: int = 0):
        super().__init__(num_classes, seed, fusion="sum")
        self.lipschitz = {"spectral": self.exact_lipschitz()}

    def exact_lipschitz(self) -> Tensor:
        tables = []
        for m in self.modalities:
            w = self.heads[m].detach()  # (C, D)
            tables.append((w[:, None, :] - w[None, :, :]).norm(dim=-1))
        return torch.stack(tables)  # (M, C, C)

    def certify_scores(self, inputs, mask):
        return self.modality_scores(inputs) * mask[..., None].to(torch.float32), self.bias


class OracleByModality(MultiModalModel):
    """Predicts the label from a chosen modality's first input element, by construction.

    Row b's label is encoded in x^(m)[b].flatten()[0] for modalities in ``informative``; the
    model reads the first present informative modality, else predicts class 0. Joint model
    (no ``modality_logits``) unless ``late=True``, where each modality votes one-hot.
    """

    def __init__(self, informative: tuple[str, ...], num_classes: int = 4, late: bool = False):
        super().__init__()
        self.modalities = MODALITIES
        self.num_classes = num_classes
        self.informative = informative
        self.late = late
        self.dummy = nn.Parameter(torch.zeros(()))

    def _votes(self, inputs) -> Tensor:
        cols = []
        for m in self.modalities:
            if m in self.informative:
                code = inputs[m].flatten(1)[:, 0].round().long().clamp(0, self.num_classes - 1)
                cols.append(nn.functional.one_hot(code, self.num_classes).float())
            else:
                cols.append(torch.zeros(inputs[m].shape[0], self.num_classes))
        return torch.stack(cols, dim=1) + self.dummy  # (B, M, C)

    def forward(self, inputs, mask) -> MultiModalOutput:
        votes = self._votes(inputs) * mask[..., None].float()
        if self.late:
            return MultiModalOutput(logits=votes.sum(1), modality_logits=votes)
        first = torch.zeros_like(votes[:, 0])
        taken = torch.zeros(votes.shape[0], dtype=torch.bool)
        for j in range(len(self.modalities)):
            use = ~taken & (votes[:, j].sum(1) > 0)
            first = torch.where(use[:, None], votes[:, j], first)
            taken |= use
        return MultiModalOutput(logits=first)


def oracle_data(n: int, num_classes: int = 4, seed: int = 0) -> dict[str, Tensor]:
    """Inputs whose first element of every modality is the label; the rest is noise."""
    inputs = make_inputs(n, seed)
    label = torch.arange(n) % num_classes
    for m in inputs:
        flat = inputs[m].flatten(1)
        flat[:, 0] = label.float()
        inputs[m] = flat.view_as(inputs[m])
    data = dict(inputs)
    data["label"] = label
    data["mask"] = torch.ones(n, len(MODALITIES), dtype=torch.bool)
    data["index"] = torch.arange(n)
    return data
