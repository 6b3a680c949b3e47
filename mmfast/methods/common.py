"""Pieces several methods share: Gaussian embeddings (reparameterisation + KL), modality-subset
ids and uniform subset sampling, masked concatenation of features.

* UDML and DMRNet both model a representation as N(mu, sigma^2): sampled in training, the mean
  at evaluation, regularised by a KL to a Gaussian prior (:class:`GaussianEmbedding`,
  :func:`gaussian_kl`).
* DMRNet and MMANet both train with modality dropout drawn uniformly from the non-empty
  subsets of the present modalities (:func:`sample_uniform_subsets`), and key per-combination
  statistics by a subset id (:func:`subset_ids`, the row of ``mmfast.ops.all_subsets``).
* One-stage distillation's joint adaptation network and TRML's missing modality inference
  module both generate a modality's representation from the other present modalities
  (:class:`CrossModalGenerator`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmfast import ops

__all__ = ["GaussianEmbedding", "gaussian_kl", "reparameterize", "subset_ids",
           "sample_uniform_subsets", "masked_concat",
           "CrossModalGenerator"]


def reparameterize(mu: Tensor, logvar: Tensor, sample: bool) -> Tensor:
    """mu + eps * exp(logvar / 2) with eps ~ N(0, I) when ``sample`` (training), else mu.

    Sampling in training decouples the directions different inputs are pushed to; the mean
    at evaluation makes predictions deterministic.
    """
    if not sample:
        return mu
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


def gaussian_kl(mu: Tensor, logvar: Tensor, prior_var: Tensor | float = 1.0) -> Tensor:
    """(B,) KL(N(mu, sigma^2) || N(0, t I)) summed over the feature dimension.

    KL = 1/2 sum_d (sigma^2 / t + mu^2 / t - log(sigma^2 / t) - 1). ``prior_var`` t is a
    number or a (B,) tensor (UDML sets it per sample from the injected noise level; DMRNet
    uses the standard normal, t = 1).
    """
    if mu.shape != logvar.shape:
        raise ValueError(f"gaussian_kl: mu and logvar must have the same shape, got "
                         f"{tuple(mu.shape)} and {tuple(logvar.shape)}")
    mu, logvar = mu.float(), logvar.float()
    t = torch.as_tensor(prior_var, dtype=torch.float32, device=mu.device)
    if t.dim() == 1:
        t = t.unsqueeze(1)
    log_ratio = logvar - torch.log(t)
    return 0.5 * (torch.exp(log_ratio) + mu.pow(2) / t - log_ratio - 1.0).sum(dim=1)


class GaussianEmbedding(nn.Module):
    """x (B, d_in) -> (s, mu, logvar), each (B, d_out): mu = W_mu x + b, logvar = W_v x + b,
    s sampled in training and equal to mu in eval mode.

    ``batch_norm``: mu = BN(W_mu x), logvar = BN(W_v x), as the papers' PME. Without it the
    spread of mu over samples can be far below the unit sampling noise at initialisation
    (DMRNet on avdigits: ~0.05 against 1, see mmfast/methods/dmrnet.py); UDML leaves it off
    (its encoders see zero-filled missing modalities, whose statistics BN would mix in).
    """

    def __init__(self, in_dim: int, out_dim: int, batch_norm: bool = False):
        super().__init__()
        if in_dim < 1 or out_dim < 1:
            raise ValueError(f"GaussianEmbedding needs in_dim >= 1 and out_dim >= 1, got "
                             f"{in_dim}, {out_dim}")
        self.mu = nn.Linear(in_dim, out_dim)
        self.logvar = nn.Linear(in_dim, out_dim)
        self.mu_norm = nn.BatchNorm1d(out_dim) if batch_norm else None
        self.logvar_norm = nn.BatchNorm1d(out_dim) if batch_norm else None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mu, logvar = self.mu(x), self.logvar(x)
        if self.mu_norm is not None:
            mu, logvar = _batch_norm(self.mu_norm, mu), _batch_norm(self.logvar_norm, logvar)
        return reparameterize(mu, logvar, self.training), mu, logvar


def _batch_norm(norm: nn.BatchNorm1d, x: Tensor) -> Tensor:
    """``norm(x)``; a one-sample training batch (a short last batch) uses the running
    statistics and leaves them unchanged, since its own variance is undefined."""
    if norm.training and x.shape[0] < 2:
        return F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                            False, 0.0, norm.eps)
    return norm(x)


def subset_ids(mask: Tensor) -> Tensor:
    """(B,) int64 row of ``ops.all_subsets(M)`` each mask row equals (bitmask - 1; -1 if empty)."""
    if mask.dim() != 2:
        raise ValueError(f"subset_ids: mask must be (B, M), got shape {tuple(mask.shape)}")
    bits = 2 ** torch.arange(mask.shape[1], device=mask.device)
    return (mask.long() * bits).sum(dim=1) - 1


def sample_uniform_subsets(present: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """(B, M) bool: per row, one non-empty subset of its present modalities, uniformly.

    DMRNet's and MMANet's modality dropout ({a}, {v}, {a, v} each 1/3 for two modalities).
    Every subset of ``ops.all_subsets`` gets a uniform score, the ones not inside the row's
    present set are excluded, and the arg-max wins: exactly uniform over the allowed subsets.
    Rows with nothing present stay empty. ``generator`` lives on the CPU (resume-safe seeds).
    """
    if present.dim() != 2 or present.dtype != torch.bool:
        raise ValueError(f"sample_uniform_subsets: present must be bool (B, M), got "
                         f"{present.dtype} {tuple(present.shape)}")
    subsets = ops.all_subsets(present.shape[1], device=present.device)  # (S, M)
    allowed = ~(subsets.unsqueeze(0) & ~present.unsqueeze(1)).any(dim=2)  # (B, S)
    score = torch.rand(allowed.shape, generator=generator).to(present.device)
    choice = score.masked_fill(~allowed, -1.0).argmax(dim=1)
    return subsets[choice] & present


def masked_concat(features: Sequence[Tensor], mask: Tensor) -> Tensor:
    """(B, sum d_m): [f_1 * p_1, ..., f_M * p_M], absent modalities contributing zeros."""
    present = mask.to(features[0].dtype)
    return torch.cat([f * present[:, m, None] for m, f in enumerate(features)], dim=1)


class CrossModalGenerator(nn.Module):
    """Generates target modalities' features from the *other* modalities that are present.

    For target t: MLP_t([masked_concat of every modality n != t, presence bits of n != t])
    -> (B, d_t). Absent sources contribute zeros and their bit says so, so one network serves
    every missing pattern, and the output never depends on an absent modality's content (nor
    on the target's own features: a generated representation must exist when t is missing).
    """

    def __init__(self, feature_dims: Sequence[int], targets: Sequence[int], hidden: int = 64):
        super().__init__()
        self.feature_dims = tuple(int(d) for d in feature_dims)
        self.targets = tuple(int(t) for t in targets)
        m = len(self.feature_dims)
        if m < 2 or hidden < 1 or not self.targets or not all(0 <= t < m for t in self.targets):
            raise ValueError(f"CrossModalGenerator needs >= 2 modalities, hidden >= 1 and "
                             f"targets in [0, {m}), got {m}, {hidden}, {self.targets}")
        total = sum(self.feature_dims)
        self.nets = nn.ModuleList(
            nn.Sequential(nn.Linear(total - self.feature_dims[t] + m - 1, hidden), nn.ReLU(),
                          nn.Linear(hidden, self.feature_dims[t]))
            for t in self.targets)

    def forward(self, features: Sequence[Tensor], mask: Tensor) -> list[Tensor]:
        """One (B, d_t) tensor per target, in ``targets`` order."""
        if len(features) != len(self.feature_dims) or mask.shape != (features[0].shape[0],
                                                                      len(self.feature_dims)):
            raise ValueError(f"CrossModalGenerator expects {len(self.feature_dims)} features and "
                             f"a (B, {len(self.feature_dims)}) mask, got {len(features)} and "
                             f"{tuple(mask.shape)}")
        out = []
        for t, net in zip(self.targets, self.nets):
            others = [n for n in range(len(features)) if n != t]
            sources = mask[:, others]
            x = torch.cat([masked_concat([features[n] for n in others], sources),
                           sources.to(features[0].dtype)], dim=1)
            out.append(net(x))
        return out


def subset_label(subset: Tensor, names: Sequence[str]) -> str:
    """"video+audio" for a (M,) bool subset row (for train_stats.json and reports)."""
    return "+".join(n for n, keep in zip(names, subset.tolist()) if keep)
