"""Joint training: encoders + one linear layer on the concatenated features (the baseline
CRMT and UME-MMA compare with)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

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
from mmfast.nn.heads import ConcatHead
from mmfast.train.engine import Stage, TrainContext, run_stage

__all__ = ["JointTraining"]


@register_method("joint")
@dataclass
class JointTraining(Method):
    """Cross entropy on the fused logits, all parameters, TrainConfig.epochs epochs."""

    def build_model(self, spec: ModelSpec) -> FusionModel:
        encoders = make_encoders(spec, self.encoders)
        return FusionModel(encoders, ConcatHead(feature_dims(spec, encoders), spec.num_classes),
                           spec.num_classes)

    def fit(self, model: FusionModel, train: Mapping[str, Tensor],
            val: Mapping[str, Tensor] | None, ctx: TrainContext) -> FitResult:
        stage = Stage(self.registered_name, ctx.cfg.epochs, cross_entropy_loss)
        return FitResult(model, run_stage(model, stage, train, val, ctx))
