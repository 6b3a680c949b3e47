"""Matched rivals: each claim's baseline differs from the paper's method by its mechanism only.

A claim "method X beats joint training" credits X's whole recipe, including ingredients any
baseline could use (modality dropout, injected noise, adversarial or mixup inputs). These
registered variants share the ingredient and lack the mechanism, so the claims table
(``mmfast.eval.claims``) can credit the mechanism itself:

=================  ==========================================================================
rival              isolates
=================  ==========================================================================
joint_dropout      DMRNet's PME / hard combination and MMANet's MAD + MAR: joint training
                   (concat head) with the same modality dropout, one non-empty subset of the
                   present modalities per sample, uniformly (``sample_uniform_subsets``).
joint_at           CRMT-AT's certifiable head and margin loss: joint training on CRMT-AT's own
                   adversarial inputs (the attack of ``create_method("crmt_at")``, its budget,
                   steps and clamp, so a change to CRMT-AT's attack changes the rival too).
joint_mix          CRMT-Mix's head and margin loss: joint training on CRMT-Mix's mixup pairs
                   (same Beta(1, 1) draw and permutation, the mixed cross entropy).
joint_available    one-stage distillation's restoration / translation: joint training that
                   never sees the privileged modalities (``blind``; default distill's
                   ``privileged``), neither in training nor at evaluation.
udml_static        UDML's dynamic, bias-corrected weights: the UDML model, losses and injected
                   noise, with the fusion weights fixed to 1 (late fusion of the Gaussian
                   embeddings' heads), in every phase and at evaluation.
trml_novirtual     TRML's missing modality inference: the same model and simulated missing
                   modalities with the virtual slots out of the fusion (``virtual_weight=0``)
                   and no semantic matching loss (``sml_weight=0``).
=================  ==========================================================================

UME-MMA's own rival, UME (the same uni-modal pre-training without the augmented fine-tuning),
is registered with UME-MMA. The rivals are variants of the existing recipes (options and
hooks), not copies of them, so a fix to a method's recipe reaches its rival.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmfast.methods import create_method, register_method
from mmfast.methods.base import FitResult, ModelSpec, feature_dims, make_encoders
from mmfast.methods.common import sample_uniform_subsets
from mmfast.methods.joint import JointModel, JointTraining
from mmfast.methods.lipschitz import empirical_class_lipschitz
from mmfast.methods.trml import TRML
from mmfast.methods.udml import UDML
from mmfast.nn.heads import ConcatHead
from mmfast.nn.model import MultiModalOutput
from mmfast.train.batches import Batch, inputs_of
from mmfast.train.engine import Stage, StepInfo, TrainContext, run_stage

__all__ = ["JointVariant", "BlindJointModel", "StaticUDML", "AUGMENTS", "RIVALS"]

#: Input augmentations of :class:`JointVariant`.
AUGMENTS = ("none", "dropout", "at", "mix")

#: rival -> the method(s) it is matched to.
RIVALS: dict[str, tuple[str, ...]] = {
    "joint_dropout": ("dmrnet", "mmanet"), "joint_at": ("crmt_at",), "joint_mix": ("crmt_mix",),
    "joint_available": ("distill",), "udml_static": ("udml",), "trml_novirtual": ("trml",),
    "ume": ("ume_mma",)}


class BlindJointModel(JointModel):
    """A JointModel that never reads the ``blind`` modalities: their mask columns are cleared
    in every forward (training and evaluation) and in the certification scores."""

    def __init__(self, *args, blind: tuple[str, ...] = (), **kwargs):
        super().__init__(*args, **kwargs)
        unknown = [m for m in blind if m not in self.modalities]
        if unknown:
            raise ValueError(f"blind: expected modalities among {self.modalities}, got {unknown}")
        self.register_buffer("blind_mask", torch.tensor([m in blind for m in self.modalities]),
                             persistent=False)

    def visible(self, mask: Tensor) -> Tensor:
        return mask.bool() & ~self.blind_mask.to(mask.device)

    def forward(self, inputs: Mapping[str, Tensor], mask: Tensor) -> MultiModalOutput:
        return super().forward(inputs, self.visible(mask) if mask.dim() == 2 else mask)

    def certify_scores(self, inputs: Mapping[str, Tensor], mask: Tensor
                       ) -> tuple[Tensor, Tensor]:
        return super().certify_scores(inputs, self.visible(mask))


@register_method("joint_dropout", augment="dropout")
@register_method("joint_at", augment="at")
@register_method("joint_mix", augment="mix")
@register_method("joint_available", blind=("video",))
@dataclass
class JointVariant(JointTraining):
    """Joint training (concat head, the same Lipschitz estimates) with an input augmentation.

    augment: "none", "dropout" (uniform non-empty subset per sample, DMRNet's / MMANet's),
        "at" (CRMT-AT's adversarial inputs) or "mix" (CRMT-Mix's mixup pairs).
    blind: modalities the model never reads (joint_available: distill's privileged ones).
    """

    augment: str = "none"
    blind: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment: expected one of {AUGMENTS}, got {self.augment!r}")
        self.blind = (self.blind,) if isinstance(self.blind, str) else tuple(self.blind)

    def build_model(self, spec: ModelSpec) -> JointModel:
        encoders = make_encoders(spec, self.encoders)
        head = ConcatHead(feature_dims(spec, encoders), spec.num_classes)
        if not self.blind:
            return JointModel(encoders, head, spec.num_classes, spec.input_shapes)
        return BlindJointModel(encoders, head, spec.num_classes, spec.input_shapes,
                               blind=self.blind)

    def loss(self, module: nn.Module, batch: Batch, info: StepInfo
             ) -> tuple[Tensor, dict[str, float]]:
        """Cross entropy of the fused logits on the augmented batch."""
        model = getattr(module, "module", module)
        names = model.modalities
        inputs, mask, label = inputs_of(batch, names), batch["mask"], batch["label"]
        if isinstance(model, BlindJointModel):
            mask = model.visible(mask)
        if self.augment == "dropout":
            mask = sample_uniform_subsets(mask.bool(), info.generator())
        elif self.augment == "at":
            crmt = create_method("crmt_at")
            inputs = crmt._adversarial(model, inputs, mask, label)
        if self.augment == "mix":
            from mmfast.methods.crmt import _mixup

            inputs, mask, label_a, label_b, lam = _mixup({**batch, "mask": mask}, names, info)
            logits = module(inputs, mask).logits.float()
            ce = lam * F.cross_entropy(logits, label_a) + (1 - lam) * F.cross_entropy(
                logits, label_b)
        else:
            logits = module(inputs, mask).logits.float()
            ce = F.cross_entropy(logits, label)
        metrics = {"acc": float((logits.argmax(1) == label).float().mean())}
        if self.augment == "dropout":
            metrics["kept_modalities"] = float(mask.float().sum(1).mean())
        return ce, metrics

    def fit(self, model: JointModel, train: Mapping[str, Tensor],
            val: Mapping[str, Tensor] | None, ctx: TrainContext) -> FitResult:
        history = run_stage(model, Stage(self.registered_name, ctx.cfg.epochs, self.loss),
                            train, val, ctx)
        model.estimate_spectral()
        tau = empirical_class_lipschitz(model, train, ctx.device, self.lip_samples)
        model.tau_empirical.copy_(tau.to(model.tau_empirical.device))
        return FitResult(model, history, {"lipschitz_estimators": sorted(model.lipschitz),
                                          "augment": self.augment, "blind": list(self.blind)})


def _static_weights(head: nn.Module, args) -> None:
    """Weights 1: no dynamic quality weights, and no reliance (bias) correction of them."""
    head.dynamic.fill_(False)
    head.reliance.fill_(1.0)


@register_method("udml_static")
@dataclass
class StaticUDML(UDML):
    """UDML with its fusion weights fixed to 1 in every phase and at evaluation (a forward
    pre-hook on the head overrides the recipe's switch to dynamic weights)."""

    def build_model(self, spec: ModelSpec):
        model = super().build_model(spec)
        model.head.register_forward_pre_hook(_static_weights)
        return model


register_method("trml_novirtual", virtual_weight=0.0, sml_weight=0.0)(TRML)
