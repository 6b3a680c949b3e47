"""Fusion heads: features of every modality + presence mask -> fused and per-modality logits.

* :class:`ConcatHead` - joint training: one linear layer on the concatenated features.
* :class:`LateHead` - late fusion: a linear head per modality, fused by ``masked_fusion``
  (the mean of the present modalities' logits; UME-MMA).
* :class:`NormalizedLateHead` - CRMT: per-modality rows normalised to zero mean and unit
  norm, per-class integration weights a^(m), a shared bias; h = sum_m a^(m) * z^(m) + b.

Each head returns ``(logits (B, C), modality_logits (B, M, C) or None, aux dict)``. Absent
modalities never influence a row: their features are zeroed (concat) or their logits are masked out.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mmfast import ops

__all__ = ["ConcatHead", "HeadOutput", "LateHead", "NormalizedLateHead", "normalized_rows"]

#: (fused logits (B, C), per-modality logits (B, M, C) or None, extra tensors for losses)
HeadOutput = tuple[Tensor, Tensor | None, dict[str, Tensor]]


def _check_features(features: Sequence[Tensor], mask: Tensor, count: int) -> None:
    if len(features) != count:
        raise ValueError(f"expected features of {count} modalities, got {len(features)}")
    if mask.dtype != torch.bool or mask.shape != (features[0].shape[0], count):
        raise ValueError(f"mask must be bool (B, {count}), got {mask.dtype} {tuple(mask.shape)}")


class ConcatHead(nn.Module):
    """logits = W [f_1 * p_1, ..., f_M * p_M] + b: the joint-training (concatenation) head."""

    def __init__(self, feature_dims: Sequence[int], num_classes: int):
        super().__init__()
        self.feature_dims = tuple(int(d) for d in feature_dims)
        self.fc = nn.Linear(sum(self.feature_dims), num_classes)

    def forward(self, features: Sequence[Tensor], mask: Tensor) -> HeadOutput:
        """(logits (B, C), None, {}) from M feature tensors (B, d_m) and mask (B, M) bool."""
        _check_features(features, mask, len(self.feature_dims))
        present = mask.to(features[0].dtype)
        joint = torch.cat([f * present[:, m, None] for m, f in enumerate(features)], dim=1)
        return self.fc(joint), None, {}

    def weight_block(self, m: int) -> Tensor:
        """W^(m) (C, d_m): the columns of the fused layer that read modality m."""
        start = sum(self.feature_dims[:m])
        return self.fc.weight[:, start:start + self.feature_dims[m]]

    def unit_logits(self, features: Sequence[Tensor]) -> Tensor:
        """(B, M, C) z^(m) = W^(m) f^(m) without bias: the fused logits are sum_m p_m z^(m) + b,
        the decomposition CRMT's certificate (and ``certified_margin``) needs."""
        return torch.stack([f @ self.weight_block(m).t() for m, f in enumerate(features)], 1)


class LateHead(nn.Module):
    """z^(m) = W^(m) f_m + b^(m); logits = mean of z^(m) over the present modalities."""

    def __init__(self, feature_dims: Sequence[int], num_classes: int):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(int(d), num_classes) for d in feature_dims)

    def forward(self, features: Sequence[Tensor], mask: Tensor) -> HeadOutput:
        """(mean of the present modalities' logits (B, C), per-modality logits (B, M, C), {})."""
        _check_features(features, mask, len(self.heads))
        z = torch.stack([head(f) for head, f in zip(self.heads, features)], dim=1)
        logits, _ = ops.masked_fusion(z, mask, normalize=True)
        return logits, z, {}


def normalized_rows(weight: Tensor, eps: float = 1e-12) -> Tensor:
    """Each row centred and scaled to unit l2 norm (CRMT's OWN with one row per group).

    The official code's orthogonal weight normalisation with norm_groups = C reduces to this:
    rows become zero-mean and unit-norm but are not mutually orthogonal.
    """
    centred = weight - weight.mean(dim=1, keepdim=True)
    return centred / centred.norm(dim=1, keepdim=True).clamp_min(eps)


class NormalizedLateHead(nn.Module):
    """CRMT head: h_k = sum_m p_m a_k^(m) (W~_k^(m) . f_m) + b_k.

    ``unit_logits`` are W~^(m) f_m (the uni-modal logits of the paper); ``modality_logits``
    returned by forward fold the integration weights in (a^(m) * W~^(m) f_m), so the fused
    score is their masked sum plus the bias, as ``mmfast.ops.certified_margin`` expects.
    """

    def __init__(self, feature_dims: Sequence[int], num_classes: int,
                 init_integration: float = 0.1):
        super().__init__()
        self.weights = nn.ParameterList(
            nn.Parameter(nn.init.kaiming_uniform_(torch.empty(num_classes, int(d)), a=5**0.5))
            for d in feature_dims
        )
        self.integration = nn.Parameter(torch.full((len(self.weights), num_classes),
                                                   float(init_integration)))
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def normalized_weight(self, m: int) -> Tensor:
        """W~^(m): (C, d_m) rows with zero mean and unit norm."""
        return normalized_rows(self.weights[m])

    def unit_logits(self, features: Sequence[Tensor]) -> Tensor:
        """(B, M, C) uni-modal logits W~^(m) f_m, without integration weights."""
        return torch.stack([f @ self.normalized_weight(m).t() for m, f in enumerate(features)],
                           dim=1)

    def integrate(self, units: Tensor) -> Tensor:
        """(B, M, C) per-modality logits a_k^(m) z_k^(m) from the unit logits."""
        return units * self.integration.unsqueeze(0).to(units.dtype)

    def fuse_units(self, units: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """(fused logits (B, C), integrated logits (B, M, C)) of precomputed unit logits: the
        masked sum plus the bias (CRMT's step 2 re-fuses cached unit logits with it)."""
        z = self.integrate(units)
        fused, _ = ops.masked_fusion(z, mask, normalize=False)
        return fused + self.bias, z

    def forward(self, features: Sequence[Tensor], mask: Tensor) -> HeadOutput:
        """(fused logits (B, C), integrated per-modality logits (B, M, C),
        {"unit_logits": (B, M, C)})."""
        _check_features(features, mask, len(self.weights))
        units = self.unit_logits(features)
        logits, z = self.fuse_units(units, mask)
        return logits, z, {"unit_logits": units}
