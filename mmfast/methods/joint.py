"""Joint training: encoders + one linear layer on the concatenated features (the baseline
CRMT and UME-MMA compare with).

The concatenation head is a sum of per-modality linear blocks, h = sum_m W^(m) phi^(m) + b, so
the joint model is certifiable exactly like CRMT's: after training it stores the paper's
empirical Lipschitz estimate and a sound spectral bound, and the certification protocol can
compare the two methods on the same footing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mmfast.methods import register_method
from mmfast.methods.base import (
    FitResult,
    FusionModel,
    Method,
    ModelSpec,
    cross_entropy_loss,
    feature_dims,
    make_encoders,
)
from mmfast.methods.lipschitz import (
    ESTIMATORS,
    empirical_class_lipschitz,
    encoder_lipschitz_bound,
    pair_table,
    pairwise_spectral_table,
)
from mmfast.nn.heads import ConcatHead
from mmfast.train.engine import Stage, TrainContext, run_stage

__all__ = ["JointModel", "JointTraining"]


class JointModel(FusionModel):
    """FusionModel with a ConcatHead, certifiable as h = sum_m z^(m) + b.

    Buffers: ``tau_empirical`` (M, C), the paper's per-class estimate (pairs by the triangle
    inequality), and ``lip_spectral`` (M, C, C) = L(phi^(m)) ||W^(m)_y - W^(m)_k||_2, a sound
    bound taken pair by pair; NaN until estimated.
    """

    head: ConcatHead

    def __init__(self, encoders: nn.ModuleDict, head: ConcatHead, num_classes: int,
                 input_shapes: Mapping[str, tuple[int, ...]]):
        super().__init__(encoders, head, num_classes)
        self.input_shapes = {m: tuple(input_shapes[m]) for m in self.modalities}
        M = len(self.modalities)
        self.register_buffer("tau_empirical", torch.full((M, num_classes), math.nan))
        self.register_buffer("lip_spectral", torch.full((M, num_classes, num_classes), math.nan))

    @property
    def lipschitz(self) -> dict[str, Tensor]:
        """estimator -> (M, C, C) table, for the estimators computed so far."""
        tables = {"empirical": pair_table(self.tau_empirical, torch.ones_like(self.tau_empirical)),
                  "spectral": self.lip_spectral}
        return {name: tables[name] for name in ESTIMATORS if not torch.isnan(tables[name]).any()}

    def certify_scores(self, inputs: Mapping[str, Tensor], mask: Tensor
                       ) -> tuple[Tensor, Tensor]:
        """(z (B, M, C) with absent modalities zeroed, bias (C,))."""
        z = self.head.unit_logits(self.features(inputs))
        return z * mask.unsqueeze(-1).to(z.dtype), self.head.fc.bias

    @property
    def lipschitz_bounds(self) -> dict[str, str]:
        """estimator -> how its table pairs classes (a key of ``lipschitz.BOUNDS``)."""
        return {"empirical": "triangle", "spectral": "exact_pairwise"}

    @torch.no_grad()
    def estimate_spectral(self) -> Tensor:
        """Fill lip_spectral with sound bounds L(phi^(m)) * ||W^(m)_y - W^(m)_k||_2."""
        bounds = torch.tensor([encoder_lipschitz_bound(self.encoders[m], self.input_shapes[m])
                               for m in self.modalities], dtype=torch.float64)
        rows = [self.head.weight_block(i) for i in range(len(self.modalities))]
        self.lip_spectral.copy_(pairwise_spectral_table(bounds, rows))
        return self.lip_spectral


@register_method("joint")
@dataclass
class JointTraining(Method):
    """Cross entropy on the fused logits, all parameters, TrainConfig.epochs epochs; then the
    Lipschitz estimates that make the model certifiable (``lip_samples`` training samples for
    the empirical one)."""

    lip_samples: int = 512

    def build_model(self, spec: ModelSpec) -> JointModel:
        encoders = make_encoders(spec, self.encoders)
        return JointModel(encoders, ConcatHead(feature_dims(spec, encoders), spec.num_classes),
                          spec.num_classes, spec.input_shapes)

    def fit(self, model: JointModel, train: Mapping[str, Tensor],
            val: Mapping[str, Tensor] | None, ctx: TrainContext) -> FitResult:
        stage = Stage(self.registered_name, ctx.cfg.epochs, cross_entropy_loss)
        history = run_stage(model, stage, train, val, ctx)
        model.estimate_spectral()
        tau = empirical_class_lipschitz(model, train, ctx.device, self.lip_samples)
        model.tau_empirical.copy_(tau.to(model.tau_empirical.device))
        return FitResult(model, history, {"lipschitz_estimators": sorted(model.lipschitz)})
