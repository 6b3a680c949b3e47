"""UDML: unbiased dynamic multimodal fusion (arXiv 2603.19681; code shicaiwei123/UDML).

Model (per modality m, on the encoder's pooled features f_m):

* probabilistic embedding N(mu_m, sigma_m^2) (``common.GaussianEmbedding``): s_m sampled in
  training, s_m = mu_m at evaluation;
* noise-aware uncertainty estimator u_m = exp(MLP_m(stopgrad(sigma_m)) / 2), MLP = Linear ->
  Dropout(0.1) -> Linear as in the official code, regressed onto the noise level injected with
  ``mmfast.ops.noisy_modality_dropout``: t_m = 1 + sigma_used / std_m (std_m the modality's
  standard deviation on the training split, the unit the noise protocol sweeps; the offset 1
  is the official convention "level 1 = clean", which keeps u^-2 finite on clean data);
* quality weights w_m = M u_m^-2 / sum_n u_n^-2 (1 during the warm-up phases), bias-corrected
  by the modality reliance d_m from the first step on, as the official model (which divides
  its warm-up weights 1 by d too): w'_m = w_m / d_m, w''_m = M w'_m / sum_n w'_n (sums and M
  over the present modalities);
* the uni-modal heads are the fused head applied to the *weighted* features with every other
  modality dropped, (1 + w''_m) z^(m) + b with z^(m) = W_m s_m (the official
  ConcatFusion_AUXI's fc([(1 + w_a) f_a, 0]), fc([0, (1 + w_v) f_v])): their CE is the
  auxiliary loss and d_m = mean over the batch of sum_k |(1 + w''_m) z^(m)_k + b_k|, refreshed
  after every training batch without gradient (so a batch's weights use the previous
  batch's d, as the official code) and stored as a buffer;
* fusion fc([(1 + w''_1) s_1, ..., (1 + w''_M) s_M]) = sum_m (1 + w''_m) W_m s_m + b, computed
  as ``mmfast.ops.masked_fusion(z, mask, 1 + w'', normalize=False) + b``.

Loss: CE(fused) + gamma sum_m CE(uni-modal head m) + beta sum_m KL(N(mu_m, sigma_m^2) ||
N(0, t_m I)) + lambda_u sum_m MSE(u_m, t_m), averaged over the samples where m is present.

Recipe (the official schedule, scaled to few epochs): clean data with quality weights fixed to
1, then injected noise with them still fixed (the estimator learns), then dynamic weights.
Two noise protocols (``noise_protocol``):

* ``"redraw"`` (default): every step, each sample and modality draws one level from
  ``noise_levels`` (zeros repeated so that half the draws are clean, the later notes'
  "independent probability 0.5 per modality");
* ``"official"`` (the released KSDataset/CramedDataset): the levels are fixed per training
  sample when the split is built (:func:`fixed_noise_levels`): half of the samples (n // 2,
  drawn with the seed) are clean in every modality, the others draw one level per modality
  uniformly from the distinct values of ``noise_levels`` (0 included, as the official level
  1 is clean); only the noise itself is drawn afresh at every step.

Sanity check of these fixes (2026-12-01, avdigits small preset, seed 0 only, so indicative;
machine loaded; validation accuracy clean / with Gaussian noise of 1 and 2 modality stds on
50% of the samples per modality): before the fixes 0.675/0.590/0.520; with them (redraw)
0.675/0.665/0.540; with them and the official protocol 0.665/0.615/0.515 (test
0.685/0.565/0.490, 0.725/0.610/0.505, 0.670/0.615/0.485). No regression; the default stays
"redraw".

Choices where METHODS.md marks details UNVERIFIED or the official code does not fit the
built-in encoders (chosen to fit the abstract's "noise-aware uncertainty, unbiased fusion"):

* the embedding acts on the pooled features (our encoders pool inside), not on feature maps,
  and has no BatchNorm (zero-filled missing modalities would corrupt its statistics);
* the KL prior variance is the same t = 1 + level;
* the estimator's input is standardised by an affine-free BatchNorm: the std map varies by a
  few percent between noise levels, and without it a few hundred optimiser steps (the small
  preset) cannot learn the scale (held-out correlation was even negative in one trial);
* the fusion weights are detached (CE does not train the estimator, only its target does);
* u is clamped at 1e-4 before u^-2 (a clean modality's u may approach 0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmfast import ops
from mmfast.methods import register_method
from mmfast.methods.base import (
    FitResult,
    FusionModel,
    Method,
    ModelSpec,
    check_optional_epochs,
    feature_dims,
    make_encoders,
)
from mmfast.methods.common import GaussianEmbedding, gaussian_kl
from mmfast.train.batches import Batch, dataset_size, derive_seed, inputs_of
from mmfast.train.engine import Stage, StepInfo, TrainContext, run_stage

__all__ = ["UDML", "UDMLHead", "NoiseEstimator", "fusion_weights", "quality_weights",
           "bias_correct", "modality_reliance", "modality_std", "fixed_noise_levels",
           "NOISE_PROTOCOLS"]

_MIN_UNCERTAINTY = 1e-4


def quality_weights(uncertainty: Tensor, mask: Tensor) -> Tensor:
    """(B, M) w_m = M u_m^-2 / sum_n u_n^-2 (inverse variance, summing to M over each row's
    present modalities; 0 for absent ones)."""
    present = mask.to(torch.float32)
    count = present.sum(dim=1, keepdim=True)
    inv = uncertainty.float().clamp_min(_MIN_UNCERTAINTY).pow(-2) * present
    return count * inv / inv.sum(dim=1, keepdim=True).clamp_min(1e-30)


def bias_correct(weight: Tensor, mask: Tensor, reliance: Tensor) -> Tensor:
    """(B, M) w''_m = M w'_m / sum_n w'_n with w'_m = w_m / d_m (M and the sums over each
    row's present modalities; 0 for absent ones)."""
    present = mask.to(torch.float32)
    count = present.sum(dim=1, keepdim=True)
    corrected = weight.float() * present / reliance.float().clamp_min(1e-12).unsqueeze(0)
    return count * corrected / corrected.sum(dim=1, keepdim=True).clamp_min(1e-30)


def fusion_weights(uncertainty: Tensor, mask: Tensor, reliance: Tensor) -> Tensor:
    """(B, M) bias-corrected dynamic weights w'' (0 for absent modalities): the
    ``quality_weights`` of the uncertainties, ``bias_correct``-ed by the reliance d."""
    return bias_correct(quality_weights(uncertainty, mask), mask, reliance)


@torch.no_grad()
def modality_reliance(unimodal_logits: Tensor, mask: Tensor, previous: Tensor) -> Tensor:
    """(M,) d_m = mean over rows with m present of sum_k |z^(m)_k| (``previous`` where a
    modality is absent from the whole batch)."""
    present = mask.to(unimodal_logits.dtype)
    mass = unimodal_logits.abs().sum(dim=2)  # (B, M)
    count = present.sum(dim=0)
    mean = (mass * present).sum(dim=0) / count.clamp_min(1)
    return torch.where(count > 0, mean.to(previous.dtype), previous)


class NoiseEstimator(nn.Module):
    """(B, E) std map -> (B,) u = exp(MLP(standardised input) / 2), MLP = Linear -> Dropout ->
    Linear. A one-sample training batch is standardised with the running statistics."""

    def __init__(self, in_dim: int, hidden: int = 64, dropout: float = 0.1):
        super().__init__()
        self.norm = nn.BatchNorm1d(in_dim, affine=False)
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.Dropout(dropout),
                                 nn.Linear(hidden, 1))

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] < 2:
            x = F.batch_norm(x, self.norm.running_mean, self.norm.running_var, training=False,
                             eps=self.norm.eps)
        else:
            x = self.norm(x)
        return torch.exp(0.5 * self.mlp(x).squeeze(1).float())


class UDMLHead(nn.Module):
    """Features -> (fused logits, uni-modal logits (1 + w''_m) z_m + b, aux: mu, logvar,
    uncertainty, fusion_weight w''). Buffers: ``reliance`` (M,) d_m; ``dynamic`` (bool): the
    weights before the bias correction are the inverse-variance ones (True) or 1 (the
    warm-up); the correction by d applies in both, as the official model."""

    def __init__(self, feature_dims: Sequence[int], num_classes: int, embed_dim: int,
                 hidden: int = 64, dropout: float = 0.1):
        super().__init__()
        self.embeddings = nn.ModuleList(GaussianEmbedding(int(d), embed_dim)
                                        for d in feature_dims)
        self.estimators = nn.ModuleList(NoiseEstimator(embed_dim, hidden, dropout)
                                        for _ in feature_dims)
        self.classifiers = nn.ModuleList(nn.Linear(embed_dim, num_classes, bias=False)
                                         for _ in feature_dims)
        self.bias = nn.Parameter(torch.zeros(num_classes))
        self.register_buffer("reliance", torch.ones(len(feature_dims)))
        self.register_buffer("dynamic", torch.tensor(False))

    def forward(self, features: Sequence[Tensor], mask: Tensor
                ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        if len(features) != len(self.embeddings) or mask.shape != (features[0].shape[0],
                                                                    len(self.embeddings)):
            raise ValueError(f"UDMLHead expects {len(self.embeddings)} features and a (B, "
                             f"{len(self.embeddings)}) mask, got {len(features)} and "
                             f"{tuple(mask.shape)}")
        s, mu, logvar, u = [], [], [], []
        for emb, est, f in zip(self.embeddings, self.estimators, features):
            s_m, mu_m, logvar_m = emb(f)
            sigma_bar = torch.exp(0.5 * logvar_m).detach()
            u.append(est(sigma_bar))
            s.append(s_m)
            mu.append(mu_m)
            logvar.append(logvar_m)
        z = torch.stack([fc(s_m) for fc, s_m in zip(self.classifiers, s)], dim=1)  # (B, M, C)
        uncertainty = torch.stack(u, dim=1)
        base = (quality_weights(uncertainty.detach(), mask) if bool(self.dynamic)
                else mask.to(torch.float32))
        weight = bias_correct(base, mask, self.reliance)
        scale = (1.0 + weight).to(z.dtype)
        # fc([0, .., (1 + w''_m) s_m, .., 0]): the official auxiliary heads (and d) see the
        # weighted features.
        unimodal = scale.unsqueeze(-1) * z + self.bias
        if self.training:  # d for the next batch, as the official code
            self.reliance.copy_(modality_reliance(unimodal.detach().float(), mask,
                                                  self.reliance))
        fused, _ = ops.masked_fusion(z, mask, scale, normalize=False)
        aux = {"mu": torch.stack(mu, dim=1), "logvar": torch.stack(logvar, dim=1),
               "uncertainty": uncertainty, "fusion_weight": weight}
        return fused + self.bias, unimodal, aux


def modality_std(data: Mapping[str, Tensor], names: Sequence[str]) -> dict[str, float]:
    """Standard deviation of each modality over the samples where it is present (the unit of
    the injected noise, as in the noise protocol)."""
    out = {}
    for i, m in enumerate(names):
        rows = data[m][data["mask"][:, i].to(data[m].device)]
        out[m] = float(rows.float().std()) if rows.numel() > 1 else 1.0
        if not out[m] > 0:
            out[m] = 1.0
    return out


#: UDML's training-noise protocols (``UDML.noise_protocol``).
NOISE_PROTOCOLS = {
    "redraw": "a level per sample and modality drawn at every step from noise_levels",
    "official": "levels fixed per sample when the split is built; 50% of the samples clean "
                "in every modality, the rest one level per modality from the distinct "
                "noise_levels; fresh noise at every step",
}
_LEVEL_KEY = "udml_noise_level"


def fixed_noise_levels(num_samples: int, num_modalities: int, levels: Sequence[float],
                       seed: int) -> Tensor:
    """(N, M) float32 noise levels fixed per sample, the official protocol: ``N // 2``
    samples (chosen with ``seed``) get 0 in every modality, the others one level per
    modality drawn uniformly from the distinct values of ``levels``."""
    gen = torch.Generator().manual_seed(int(seed))
    choices = torch.tensor(sorted(set(float(v) for v in levels)), dtype=torch.float32)
    table = choices[torch.randint(len(choices), (num_samples, num_modalities), generator=gen)]
    clean = torch.randperm(num_samples, generator=gen)[:num_samples // 2]
    table[clean] = 0.0
    return table


def _present_mean(values: Tensor, present: Tensor) -> Tensor:
    """Sum over modalities of the mean of ``values`` (B, M) over each modality's present rows."""
    p = present.to(values.dtype)
    return ((values * p).sum(dim=0) / p.sum(dim=0).clamp_min(1)).sum()


@register_method("udml")
@dataclass
class UDML(Method):
    """Hyper-parameters.

    gamma: weight of the uni-modal heads' cross entropy (official: 2.5-4 for two modalities).
    beta: weight of the KL term (official: 0 to 1e-3).
    lambda_u: weight of the estimator's regression loss (official: 0.1).
    noise_levels: noise std levels (x the modality's std); each sample and modality draws one
        uniformly, so repeated zeros set the clean share.
    clean_epochs, fixed_epochs, dynamic_epochs: the three phases (defaults from
        TrainConfig.epochs: a third, a sixth, the rest).
    embed_dim: width of the Gaussian embedding (None: the widest encoder feature).
    estimator_hidden: hidden width of the uncertainty MLP.
    noise_protocol: "redraw" or "official" (levels fixed per sample; module docstring).
    """

    gamma: float = 1.0
    beta: float = 1e-3
    lambda_u: float = 0.1
    noise_levels: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0, 0.25, 0.5, 1.0, 1.5, 2.0)
    clean_epochs: int | None = None
    fixed_epochs: int | None = None
    dynamic_epochs: int | None = None
    embed_dim: int | None = None
    estimator_hidden: int = 64
    noise_protocol: str = "redraw"

    def __post_init__(self) -> None:
        if self.noise_protocol not in NOISE_PROTOCOLS:
            raise ValueError(f"noise_protocol: expected one of {sorted(NOISE_PROTOCOLS)}, "
                             f"got {self.noise_protocol!r}")
        self.noise_levels = tuple(float(v) for v in self.noise_levels)
        if not self.noise_levels or min(self.noise_levels) < 0:
            raise ValueError(f"noise_levels must be a non-empty tuple of values >= 0, got "
                             f"{self.noise_levels}")
        for name in ("gamma", "beta", "lambda_u"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        check_optional_epochs(self, ("clean_epochs", "fixed_epochs", "dynamic_epochs"),
                              minimum=0)

    def build_model(self, spec: ModelSpec) -> FusionModel:
        encoders = make_encoders(spec, self.encoders)
        dims = feature_dims(spec, encoders)
        head = UDMLHead(dims, spec.num_classes, self.embed_dim or max(dims),
                        self.estimator_hidden)
        return FusionModel(encoders, head, spec.num_classes)

    def phase_epochs(self, total: int) -> tuple[int, int, int]:
        """(clean, fixed-weight noisy, dynamic) epoch counts; dynamic is at least 1."""
        clean = total // 3 if self.clean_epochs is None else self.clean_epochs
        fixed = total // 6 if self.fixed_epochs is None else self.fixed_epochs
        dynamic = total - clean - fixed if self.dynamic_epochs is None else self.dynamic_epochs
        return clean, fixed, max(1, dynamic)

    def inject_noise(self, inputs: Mapping[str, Tensor], names: Sequence[str],
                     std: Mapping[str, float], seed: int) -> tuple[dict[str, Tensor], Tensor]:
        """Inputs with one drawn noise level per sample and modality, and the (B, M) levels
        sigma_used / std (the estimator's target is 1 + level)."""
        out, levels = dict(inputs), []
        for i, m in enumerate(names):
            sigmas = [level * std[m] for level in self.noise_levels]
            out[m], _, used = ops.noisy_modality_dropout(inputs[m], 0.0, sigmas, seed=seed,
                                                         offset=i)
            levels.append(used / std[m])
        return out, torch.stack(levels, dim=1)

    @staticmethod
    def inject_fixed_noise(inputs: Mapping[str, Tensor], names: Sequence[str],
                           std: Mapping[str, float], levels: Tensor, seed: int
                           ) -> dict[str, Tensor]:
        """Inputs plus Gaussian noise of std level * std_m per sample (levels (B, M) fixed
        per sample; the noise itself drawn with ``seed``, fresh every step)."""
        gen = torch.Generator().manual_seed(int(seed))
        out = dict(inputs)
        for i, m in enumerate(names):
            x = inputs[m]
            noise = torch.randn(x.shape, generator=gen).to(device=x.device, dtype=x.dtype)
            sigma = (levels[:, i] * std[m]).to(x.dtype).view(-1, *[1] * (x.dim() - 1))
            out[m] = x + noise * sigma
        return out

    def loss(self, noisy: bool, std: Mapping[str, float]):
        """The UDML loss on clean (``noisy=False``) or noise-injected batches."""

        def loss_fn(module: nn.Module, batch: Batch, info: StepInfo
                    ) -> tuple[Tensor, dict[str, float]]:
            names = getattr(module, "module", module).modalities
            inputs, mask, label = inputs_of(batch, names), batch["mask"], batch["label"]
            if noisy and _LEVEL_KEY in batch:
                levels = batch[_LEVEL_KEY].to(mask.device, torch.float32)
                inputs = self.inject_fixed_noise(inputs, names, std, levels, info.seed)
            elif noisy:
                inputs, levels = self.inject_noise(inputs, names, std, info.seed)
            else:
                levels = torch.zeros(mask.shape, device=mask.device)
            out = module(inputs, mask)
            ce = F.cross_entropy(out.logits.float(), label)
            uni = out.modality_logits.float()
            uni_ce = F.cross_entropy(uni.flatten(0, 1), label.repeat_interleave(len(names)),
                                     reduction="none").view(mask.shape)
            kl = torch.stack([gaussian_kl(out.aux["mu"][:, i], out.aux["logvar"][:, i],
                                          1.0 + levels[:, i]) for i in range(len(names))], 1)
            mse = (out.aux["uncertainty"] - (1.0 + levels)).pow(2)
            loss = (ce + self.gamma * _present_mean(uni_ce, mask)
                    + self.beta * _present_mean(kl, mask)
                    + self.lambda_u * _present_mean(mse, mask))
            acc = (out.logits.argmax(1) == label).float().mean()
            return loss, {"acc": float(acc),
                          "estimator_mse": float(_present_mean(mse.detach(), mask)) / len(names)}

        return loss_fn

    def fit(self, model: FusionModel, train: Mapping[str, Tensor],
            val: Mapping[str, Tensor] | None, ctx: TrainContext) -> FitResult:
        std = modality_std(train, model.modalities)
        clean, fixed, dynamic = self.phase_epochs(ctx.cfg.epochs)
        name = self.registered_name
        phases = [(f"{name}_clean", clean, False, False), (f"{name}_noisy", fixed, True, False),
                  (f"{name}_dynamic", dynamic, True, True)]
        noisy_train = train
        if self.noise_protocol == "official":
            table = fixed_noise_levels(dataset_size(train), len(model.modalities),
                                       self.noise_levels, derive_seed(ctx.cfg.seed, 0x0D31))
            noisy_train = {**train, _LEVEL_KEY: table}
        history = []
        for index, (stage_name, epochs, noisy, dynamic_weights) in enumerate(phases):
            if epochs == 0:
                continue
            model.head.dynamic.fill_(dynamic_weights)
            history += run_stage(model, Stage(stage_name, epochs, self.loss(noisy, std)),
                                 noisy_train if noisy else train, val, ctx, index)
        model.head.dynamic.fill_(True)
        return FitResult(model, history, {"noise_unit_std": std,
                                          "reliance": model.head.reliance.tolist(),
                                          "noise_protocol": NOISE_PROTOCOLS[self.noise_protocol],
                                          "bias_correction": "from the first step"})
