"""Late fusion: a linear head per modality, averaged over the present modalities with
``mmfast.ops.masked_fusion``, trained end to end with cross entropy on the fused logits."""

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
from mmfast.nn.heads import LateHead
from mmfast.train.engine import Stage, TrainContext, run_stage

__all__ = ["LateFusion", "build_late_fusion_model"]


def build_late_fusion_model(spec: ModelSpec, encoders=None) -> FusionModel:
    """Encoders + :class:`LateHead` (shared by late fusion, UME and UME-MMA)."""
    modules = make_encoders(spec, encoders)
    return FusionModel(modules, LateHead(feature_dims(spec, modules), spec.num_classes),
                       spec.num_classes)


@register_method("late")
@dataclass
class LateFusion(Method):
    """End-to-end late fusion (no uni-modal pre-training, no augmentation)."""

    def build_model(self, spec: ModelSpec) -> FusionModel:
        return build_late_fusion_model(spec, self.encoders)

    def fit(self, model: FusionModel, train: Mapping[str, Tensor],
            val: Mapping[str, Tensor] | None, ctx: TrainContext) -> FitResult:
        stage = Stage(self.registered_name, ctx.cfg.epochs, cross_entropy_loss)
        return FitResult(model, run_stage(model, stage, train, val, ctx))
