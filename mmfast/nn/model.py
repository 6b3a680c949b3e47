"""The contract between models, methods, the trainer and the evaluation protocols.

Every multi-modal model in mmfast takes a dict of per-modality input tensors plus a presence
mask and returns a :class:`MultiModalOutput`. Protocols only rely on this contract, so any
``nn.Module`` that honours it can be trained and evaluated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from torch import Tensor, nn

#: Modality order of the built-in avdigits data (the columns of every presence mask).
MODALITIES: tuple[str, ...] = ("video", "audio", "image")


@dataclass
class MultiModalOutput:
    """What a model returns for a batch.

    logits: (B, C) fused class scores (the prediction).
    modality_logits: (B, M, C) per-modality class scores when the model has them (late
        fusion, UME-MMA, CRMT); protocols use them to evaluate every missing-modality subset
        from one encoder pass (``mmfast.ops.subset_accuracy``).
    aux: method-specific tensors (features, mu / logvar, uncertainties, ...) for losses.
    """

    logits: Tensor
    modality_logits: Tensor | None = None
    aux: dict[str, Tensor] = field(default_factory=dict)


class MultiModalModel(nn.Module):
    """Base class: ``forward(inputs, mask) -> MultiModalOutput``.

    inputs maps modality name -> (B, ...) tensor; mask is bool (B, M) in the order of
    ``self.modalities`` (True = present). A model must give the same output for a row whatever
    the content of its absent modalities (loaders zero them, but models must not rely on it).
    """

    modalities: tuple[str, ...]
    num_classes: int

    def forward(self, inputs: Mapping[str, Tensor], mask: Tensor) -> MultiModalOutput:  # noqa: D102
        raise NotImplementedError


@runtime_checkable
class CertifiableModel(Protocol):
    """A model whose fused score is h_k = sum_m z_bmk + b_k (CRMT's joint/late framework).

    certify_scores returns z (B, M, C) with any integration weights folded in, and the bias
    (C,) or None; ``lipschitz`` maps an estimator name ("empirical", "spectral") to an (M, C, C)
    table of Lipschitz constants of x^(m) -> z^(m)_y - z^(m)_k, as ``mmfast.ops.certified_margin``
    takes them.
    """

    lipschitz: dict[str, Tensor]

    def certify_scores(
        self, inputs: Mapping[str, Tensor], mask: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """(z (B, M, C) with integration weights folded in, bias (C,) or None)."""
        ...
