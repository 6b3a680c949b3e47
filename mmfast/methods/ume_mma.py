"""UME-MMA (arXiv 2310.06383) and the pure uni-modal ensemble (UME).

Recipe: (1) pre-train every modality on its own (its encoder + its linear head, cross
entropy on the samples that have the modality); (2) the late-fusion model is initialised
from exactly those weights; (3) UME-MMA fine-tunes it with missing-modality augmentation
(``mmfast.ops.modality_noise_dropout``: each modality dropped with probability p_drop, at
least one kept per sample, optional Gaussian noise on the kept ones). UME stops after (2).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmfast import ops
from mmfast.methods import register_method
from mmfast.methods.base import FitResult, FusionModel, Method, ModelSpec, stage_epochs
from mmfast.methods.late import build_late_fusion_model
from mmfast.nn.model import MultiModalModel, MultiModalOutput
from mmfast.train.batches import Batch, inputs_of
from mmfast.train.engine import Stage, StepInfo, TrainContext, run_stage

__all__ = ["UMEMMA", "UniModalView", "rows_with_modality", "augmented_cross_entropy"]


class UniModalView(MultiModalModel):
    """Modality ``name`` of a late-fusion model seen as a one-modality model.

    It shares (not copies) the encoder and the head of that modality, so training the view
    trains those exact modules of the multi-modal model: the fine-tuning stage starts from
    the uni-modal weights by construction.
    """

    def __init__(self, model: FusionModel, name: str):
        super().__init__()
        if name not in model.modalities:
            raise ValueError(f"modality {name!r} not in the model's {model.modalities}")
        index = model.modalities.index(name)
        self.encoder = model.encoders[name]
        self.head = model.head.heads[index]
        self.modalities = (name,)
        self.num_classes = model.num_classes

    def forward(self, inputs: Mapping[str, Tensor], mask: Tensor) -> MultiModalOutput:
        z = self.head(self.encoder(inputs[self.modalities[0]]))
        return MultiModalOutput(z, z.unsqueeze(1))


def rows_with_modality(data: Mapping[str, Tensor], column: int) -> dict[str, Tensor]:
    """The samples of ``data`` whose mask has modality ``column`` present (mask narrowed)."""
    keep = data["mask"][:, column]
    out = {k: v[keep] for k, v in data.items() if isinstance(v, Tensor)}
    out["mask"] = out["mask"][:, column:column + 1]
    return out


def _unimodal_loss(module: nn.Module, batch: Batch, info: StepInfo
                   ) -> tuple[Tensor, dict[str, float]]:
    view = getattr(module, "module", module)
    logits = module(inputs_of(batch, view.modalities), batch["mask"]).logits
    acc = (logits.argmax(1) == batch["label"]).float().mean()
    return F.cross_entropy(logits.float(), batch["label"]), {"acc": float(acc)}


def augmented_cross_entropy(p_drop: float, sigma: float):
    """Loss: cross entropy of the fused logits on a missing-modality-augmented batch."""

    def loss_fn(module: nn.Module, batch: Batch, info: StepInfo
                ) -> tuple[Tensor, dict[str, float]]:
        names = getattr(module, "module", module).modalities
        inputs, mask, _ = ops.modality_noise_dropout(
            inputs_of(batch, names), batch["mask"], p_drop, sigma, seed=info.seed, offset=0,
            min_keep=1, modalities=names)
        logits = module(inputs, mask).logits
        acc = (logits.argmax(1) == batch["label"]).float().mean()
        kept = mask.float().sum(1).mean()
        return (F.cross_entropy(logits.float(), batch["label"]),
                {"acc": float(acc), "kept_modalities": float(kept)})

    return loss_fn


@register_method("ume_mma")
@register_method("ume", finetune=False)
@dataclass
class UMEMMA(Method):
    """Hyper-parameters.

    unimodal_epochs: pre-training epochs per modality (default TrainConfig.epochs).
    finetune_epochs: multi-modal fine-tuning epochs (default TrainConfig.epochs // 2).
    finetune_lr_scale: fine-tuning learning rate = TrainConfig.lr * this.
    p_drop: per-modality drop probability of the augmentation (at least one kept).
    sigma: Gaussian noise std added to kept modalities (0: dropout only).
    finetune: False gives UME, the pure uni-modal ensemble.
    """

    unimodal_epochs: int | None = None
    finetune_epochs: int | None = None
    finetune_lr_scale: float = 0.5
    p_drop: float = 0.5
    sigma: float = 0.0
    finetune: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.p_drop <= 1.0:
            raise ValueError(f"p_drop must be in [0, 1], got {self.p_drop}")
        if self.sigma < 0 or self.finetune_lr_scale <= 0:
            raise ValueError(f"sigma must be >= 0 and finetune_lr_scale > 0, got "
                             f"{self.sigma}, {self.finetune_lr_scale}")

    def build_model(self, spec: ModelSpec) -> FusionModel:
        return build_late_fusion_model(spec, self.encoders)

    def fit(self, model: FusionModel, train: Mapping[str, Tensor],
            val: Mapping[str, Tensor] | None, ctx: TrainContext) -> FitResult:
        history = []
        epochs = stage_epochs(self.unimodal_epochs, ctx.cfg.epochs)
        for i, name in enumerate(model.modalities):
            view = UniModalView(model, name)
            stage = Stage(f"unimodal_{name}", epochs, _unimodal_loss)
            history += run_stage(view, stage, rows_with_modality(train, i),
                                 None if val is None else rows_with_modality(val, i), ctx, i)
        if self.finetune:
            stage = Stage(f"{self.registered_name}_finetune",
                          stage_epochs(self.finetune_epochs, ctx.cfg.epochs // 2),
                          augmented_cross_entropy(self.p_drop, self.sigma),
                          lr=ctx.cfg.lr * self.finetune_lr_scale)
            history += run_stage(model, stage, train, val, ctx, len(model.modalities))
        return FitResult(model, history, {"unimodal_epochs": epochs})


@torch.no_grad()
def modality_accuracies(model: FusionModel, data: Mapping[str, Tensor]) -> list[float]:
    """Accuracy of each modality's own head on the samples that have it (for tests/reports)."""
    out = []
    for i, name in enumerate(model.modalities):
        rows = rows_with_modality(data, i)
        logits = UniModalView(model, name)(rows, rows["mask"]).logits
        out.append(float((logits.argmax(1) == rows["label"]).float().mean()))
    return out
