"""Gaussian noise augmentation for randomized smoothing (Cohen, Rosenfeld and Kolter 2019).

A smoothing certificate is only as good as the base model's accuracy under the smoothing
noise, so the base model is trained on noisy inputs: every training batch gets Gaussian noise
of std sigma_m on modality m (input units, the units of ``mmfast.eval.smoothing``'s sigma),
drawn with ``mmfast.ops.noisy_modality_dropout`` (p_drop = 0) from the step's seed (offset =
the modality index), so a resumed run draws the same noise. The model is late fusion
(a linear head per modality, averaged over the present modalities), so the smoothing protocol
also certifies every missing-modality pattern from the same draws.

Choices where Cohen et al. are unspecific for multi-modal inputs: one sigma per modality
(default 0.12 for each, Cohen's smallest level, equal to the smoothing protocol's default), noise
on every sample and step (no clean fraction), absent modalities noised too (the model ignores
them by contract).

Finding (avdigits, demo budget: small preset, 15 epochs, 2026-12-01; smoothing sigma 0.12,
n0 = 8, n = 100, alpha = 0.001 on 32 seeded test rows): clean accuracy 0.535 (CRMT 0.765),
smoothed certified accuracy 0.44 / 0.25 at l2 radius 0.05 / 0.1 (CRMT smoothed 0.41 / 0.34,
CRMT's sound spectral Lipschitz certificate 0 / 0 on the same rows). Under the noise the
model trains slowly on this budget (val accuracy 0.10 -> 0.45 by epoch 9, 0.52 at epoch 15);
plain late fusion at the same budget was not measured here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from mmfast import ops
from mmfast.methods import register_method
from mmfast.methods.base import FitResult, FusionModel, Method, ModelSpec
from mmfast.methods.late import build_late_fusion_model
from mmfast.train.batches import Batch, inputs_of
from mmfast.train.engine import Stage, StepInfo, TrainContext, run_stage

__all__ = ["GaussianAugmentation", "gaussian_noise_loss", "modality_sigmas"]


def modality_sigmas(sigma: float | Mapping[str, float], names: tuple[str, ...]
                    ) -> dict[str, float]:
    """{modality: sigma} from one number or a mapping naming every modality."""
    if isinstance(sigma, Mapping):
        missing = [m for m in names if m not in sigma]
        if missing:
            raise ValueError(f"gaussian_aug: argument 'sigma' expected a value for modalities "
                             f"{list(names)}, missing {missing}")
        out = {m: float(sigma[m]) for m in names}
    else:
        out = {m: float(sigma) for m in names}
    bad = {m: s for m, s in out.items() if not (math.isfinite(s) and s >= 0)}
    if bad:
        raise ValueError(f"gaussian_aug: argument 'sigma' expected finite values >= 0, got {bad}")
    return out


def gaussian_noise_loss(sigma: float | Mapping[str, float]):
    """Loss: cross entropy of the fused logits on inputs with N(0, sigma_m^2) noise."""

    def loss_fn(module: nn.Module, batch: Batch, info: StepInfo
                ) -> tuple[Tensor, dict[str, float]]:
        names = getattr(module, "module", module).modalities
        sigmas = modality_sigmas(sigma, names)
        inputs = {m: ops.noisy_modality_dropout(x, 0.0, sigmas[m], seed=info.seed, offset=j)[0]
                  if sigmas[m] > 0 else x
                  for j, (m, x) in enumerate(inputs_of(batch, names).items())}
        logits = module(inputs, batch["mask"]).logits
        acc = (logits.argmax(1) == batch["label"]).float().mean()
        return F.cross_entropy(logits.float(), batch["label"]), {"noisy_acc": float(acc)}

    return loss_fn


@register_method("gaussian_aug")
@dataclass
class GaussianAugmentation(Method):
    """Hyper-parameters.

    sigma: noise std in input units, one number or {modality: std} (e.g.
        ``--set "sigma={'video': 0.25, 'audio': 0.05, 'image': 0.25}"``).
    """

    sigma: float | dict[str, float] = 0.12

    def __post_init__(self) -> None:
        if isinstance(self.sigma, Mapping):
            modality_sigmas(self.sigma, tuple(self.sigma))
        else:
            modality_sigmas(self.sigma, ("all",))

    def build_model(self, spec: ModelSpec) -> FusionModel:
        modality_sigmas(self.sigma, spec.modalities)
        return build_late_fusion_model(spec, self.encoders)

    def fit(self, model: FusionModel, train: Mapping[str, Tensor],
            val: Mapping[str, Tensor] | None, ctx: TrainContext) -> FitResult:
        stage = Stage(self.registered_name, ctx.cfg.epochs, gaussian_noise_loss(self.sigma))
        history = run_stage(model, stage, train, val, ctx)
        return FitResult(model, history,
                         {"sigma": modality_sigmas(self.sigma, model.modalities)})
