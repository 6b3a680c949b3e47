"""Drop-in ``nn.Module`` wrappers of the fused ops, for use inside any training loop.

They hold hyper-parameters (and, for MaskedFusion, optional learnable weights) and call
:mod:`mmfast.ops`; all the arithmetic lives in the ops.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mmfast import ops

__all__ = ["MaskedFusion", "ModalityNoiseDropout", "CertifiedMargin", "SubsetEvaluator"]


class MaskedFusion(nn.Module):
    """Fuse per-modality features or logits (B, M, D) -> (B, D) under a presence mask.

    Args:
        num_modalities: M.
        learn_weights: learn one non-negative weight per modality (softplus of a parameter,
            initialised to 1); otherwise all modalities weigh the same.
        normalize: weighted mean over present modalities (True) or weighted sum.
        backend: force an ops backend (default auto).
    """

    def __init__(self, num_modalities: int, learn_weights: bool = False, normalize: bool = True,
                 backend: str | None = None) -> None:
        super().__init__()
        self.normalize, self.backend = normalize, backend
        self.raw_weight = (
            nn.Parameter(torch.full((num_modalities,), 0.5413)) if learn_weights else None
        )  # softplus(0.5413) = 1

    def modality_weight(self) -> Tensor | None:
        return None if self.raw_weight is None else F.softplus(self.raw_weight)

    def forward(self, x: Tensor, mask: Tensor, weight: Tensor | None = None) -> Tensor:
        """``weight`` (M,) or (B, M) overrides the module's own weights (e.g. UDML's dynamic
        per-sample weights)."""
        w = weight if weight is not None else self.modality_weight()
        return ops.masked_fusion(x, mask, w, self.normalize, backend=self.backend)[0]


class ModalityNoiseDropout(nn.Module):
    """Missing-modality + noise augmentation over all modalities; identity in eval mode.

    In training, each present modality of a sample is dropped with probability ``p_drop``
    (at least ``min_keep`` stay) and kept ones get Gaussian noise of std ``sigma`` (a number or
    a list of levels drawn per sample). Every call advances an internal step counter used as
    the random stream's offset, so a run is reproducible from ``seed`` and the step.
    ``last_sigma`` holds the per-sample std each modality received (UDML's targets).
    """

    def __init__(self, p_drop: float = 0.5, sigma: float | Sequence[float] = 0.0,
                 min_keep: int = 1, seed: int | None = None,
                 modalities: Sequence[str] | None = None, backend: str | None = None) -> None:
        super().__init__()
        if not 0.0 <= p_drop <= 1.0:
            raise ValueError(f"ModalityNoiseDropout: argument 'p_drop' expected a probability "
                             f"in [0, 1], got {p_drop}")
        self.p_drop, self.sigma, self.min_keep = p_drop, sigma, min_keep
        self.modalities = tuple(modalities) if modalities is not None else None
        self.seed = int(torch.randint(0, 2**62, ()).item()) if seed is None else seed
        self.backend = backend
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.last_sigma: dict[str, Tensor] = {}

    def forward(self, inputs: Mapping[str, Tensor], mask: Tensor | None = None
                ) -> tuple[dict[str, Tensor], Tensor]:
        names = self.modalities or tuple(inputs.keys())
        if mask is None:
            first = inputs[names[0]]
            mask = torch.ones(first.shape[0], len(names), dtype=torch.bool, device=first.device)
        if not self.training:
            return dict(inputs), mask
        out, kept, self.last_sigma = ops.modality_noise_dropout(
            inputs, mask, self.p_drop, self.sigma, self.seed, int(self.step),
            min_keep=self.min_keep, modalities=names, backend=self.backend)
        self.step += 1
        return out, kept


class CertifiedMargin(nn.Module):
    """Certified radius of h = sum_m z_m + b from per-modality logits and a Lipschitz table.

    Args:
        lip: (M,) or (M, C, C) Lipschitz constants of x^(m) -> z^(m)_y - z^(m)_k (a buffer;
            replace it with ``set_lipschitz`` after estimating them).
        p: perturbation norm; rival: "min" (sound) or "top" (CRMT's training rule).
    """

    def __init__(self, lip: Tensor, p: float = 2.0, rival: str = "min",
                 backend: str | None = None) -> None:
        super().__init__()
        self.p, self.rival, self.backend = p, rival, backend
        self.register_buffer("lip", lip.detach().clone())

    def set_lipschitz(self, lip: Tensor) -> None:
        self.lip = lip.detach().clone().to(self.lip.device)

    def forward(self, z: Tensor, target: Tensor, mask: Tensor | None = None,
                bias: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """-> (radius, margin, runner_up), see :func:`mmfast.ops.certified_margin`."""
        return ops.certified_margin(z, target, self.lip.to(z.device), mask, bias, self.p,
                                    self.rival, backend=self.backend)

    def certified_accuracy(self, z: Tensor, target: Tensor, radii: Sequence[float],
                           mask: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        radius = self(z, target, mask, bias)[0]
        return ops.certified_accuracy(radius, list(radii))


class SubsetEvaluator(nn.Module):
    """Accuracy of a late-fusion model on every missing-modality pattern, from one pass.

    Call ``update(z, target, present)`` per batch with per-modality logits z (B, M, C), then
    ``compute()`` for {pattern name: accuracy}. Counts are exact integers across batches.
    """

    def __init__(self, modalities: Sequence[str], subsets: Tensor | None = None,
                 weight: Tensor | None = None, backend: str | None = None) -> None:
        super().__init__()
        self.modalities = tuple(modalities)
        subsets = ops.all_subsets(len(self.modalities)) if subsets is None else subsets.bool()
        self.register_buffer("subsets", subsets)
        self.register_buffer("weight", None if weight is None else weight.detach().clone())
        self.register_buffer("correct", torch.zeros(len(subsets), dtype=torch.int64))
        self.register_buffer("total", torch.zeros((), dtype=torch.int64))
        self.backend = backend

    @property
    def names(self) -> list[str]:
        return ["+".join(m for m, on in zip(self.modalities, row) if on)
                for row in self.subsets.tolist()]

    def reset(self) -> None:
        self.correct.zero_()
        self.total.zero_()

    @torch.no_grad()
    def update(self, z: Tensor, target: Tensor, present: Tensor | None = None) -> Tensor:
        """Add a batch; returns its per-subset accuracy."""
        acc = ops.subset_accuracy(z, target, self.subsets.to(z.device), self.weight, present,
                                  backend=self.backend)
        B = z.shape[0]
        if B:
            self.correct += torch.round(acc * B).to(torch.int64).to(self.correct.device)
            self.total += B
        return acc

    forward = update

    def compute(self) -> dict[str, float]:
        total = max(int(self.total), 1)
        return {n: int(c) / total for n, c in zip(self.names, self.correct.tolist())}
