"""Drop-in ``nn.Module`` wrappers of the fused ops, for use inside any training loop.

They hold hyper-parameters (and, for MaskedFusion, optional learnable weights) and call
:mod:`mmfast.ops`; all the arithmetic lives in the ops. Modules return what a training loop
needs, the ops every tensor they compute (named tuples, see :mod:`mmfast.ops.results`):

* ``MaskedFusion(...)(x, mask)`` -> y; ``ops.masked_fusion`` -> ``(y, denom)``;
* ``ModalityNoiseDropout(...)(inputs, mask)`` -> ``(inputs, mask)`` (sigma_used in
  ``last_sigma``); ``ops.modality_noise_dropout`` -> ``(inputs, mask, sigma_used)``;
* ``CertifiedMargin(...)(z, target)`` and ``ops.certified_margin`` -> ``(radius, margin,
  runner_up)``.

Every module traces with ``torch.compile(fullgraph=True)`` and compiles once across training
steps (ModalityNoiseDropout's step counter is a tensor the op reads).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mmfast import ops
from mmfast.ops._dispatch import BACKENDS

__all__ = ["MaskedFusion", "ModalityNoiseDropout", "CertifiedMargin", "SubsetEvaluator"]


def _check_backend(owner: str, backend: str | None) -> str | None:
    if backend is not None and backend.lower() not in ("auto", *BACKENDS):
        raise ValueError(f"{owner}: argument 'backend' expected None or one of "
                         f"{('auto', *BACKENDS)}, got {backend!r}")
    return backend


class MaskedFusion(nn.Module):
    """Fuse per-modality features or logits (B, M, D) -> (B, D) under a presence mask.

    Args:
        num_modalities: M.
        learn_weights: learn one non-negative weight per modality (softplus of a parameter,
            initialised to 1); otherwise all modalities weigh the same.
        normalize: weighted mean over present modalities (True) or weighted sum.
        backend: force an ops backend (default auto).

    Returns y only; :func:`mmfast.ops.masked_fusion` also returns the weight sums.
    """

    def __init__(self, num_modalities: int, learn_weights: bool = False, normalize: bool = True,
                 backend: str | None = None) -> None:
        super().__init__()
        if isinstance(num_modalities, bool) or not isinstance(num_modalities, int) \
                or num_modalities < 1:
            raise ValueError(f"MaskedFusion: argument 'num_modalities' expected an int >= 1, "
                             f"got {num_modalities!r}")
        self.num_modalities = num_modalities
        self.normalize, self.backend = normalize, _check_backend("MaskedFusion", backend)
        self.raw_weight = (
            nn.Parameter(torch.full((num_modalities,), 0.5413)) if learn_weights else None
        )  # softplus(0.5413) = 1

    def modality_weight(self) -> Tensor | None:
        """The current (M,) fusion weights, softplus of the learned parameter (differentiable),
        or None when the module weighs all modalities the same."""
        return None if self.raw_weight is None else F.softplus(self.raw_weight)

    def forward(self, x: Tensor, mask: Tensor | None = None, weight: Tensor | None = None
                ) -> Tensor:
        """Fused y (B, D) of x (B, M, D) under ``mask`` (B, M) bool (None = all present).

        ``weight`` (M,), (B, M), (M, D) or (B, M, D) overrides the module's own weights (e.g.
        UDML's dynamic per-sample weights, CRMT's per-class integration weights)."""
        w = weight if weight is not None else self.modality_weight()
        return ops.masked_fusion(x, mask, w, self.normalize, backend=self.backend).y


def _check_sigma(sigma) -> float | tuple[float, ...]:
    owner = "ModalityNoiseDropout"
    if isinstance(sigma, Tensor):
        sigma = sigma.tolist() if sigma.dim() == 1 else sigma.item()
    if isinstance(sigma, (int, float)) and not isinstance(sigma, bool):
        values: Sequence = [sigma]
    elif isinstance(sigma, Sequence) and not isinstance(sigma, (str, bytes)) and len(sigma):
        values = sigma
    else:
        raise ValueError(f"{owner}: argument 'sigma' expected a number or a non-empty list of "
                         f"levels, got {sigma!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or v < 0:
            raise ValueError(f"{owner}: argument 'sigma' expected finite non-negative values, "
                             f"got {v!r}")
    if isinstance(sigma, (int, float)):
        return float(sigma)
    return tuple(float(v) for v in values)


class ModalityNoiseDropout(nn.Module):
    """Missing-modality + noise augmentation over all modalities; identity in eval mode.

    In training, each present modality of a sample is dropped with probability ``p_drop``
    (at least ``min_keep`` stay) and kept ones get Gaussian noise of std ``sigma`` (a number or
    a list of levels drawn per sample). Every call advances an internal step counter (a 0-d
    int64 buffer the op reads: torch.compile does not recompile as it changes) used as the
    random stream's offset, so a run is reproducible from ``seed`` and the step. Both are in
    ``state_dict()``: a resumed run continues the same noise stream. ``last_sigma`` holds the
    per-sample std each modality received (UDML's targets).

    Args:
        p_drop: drop probability in [0, 1] (per-sample probabilities: ``forward(p_drop=...)``).
        sigma: finite non-negative std, or a non-empty list of levels.
        min_keep: present modalities kept per sample at least (int >= 0).
        seed: int in [0, 2**63); None draws one from torch's global generator.
        modalities: order of the mask columns (default: the order of the inputs dict).
        backend: force an ops backend (default auto).
    """

    def __init__(self, p_drop: float = 0.5, sigma: float | Sequence[float] = 0.0,
                 min_keep: int = 1, seed: int | None = None,
                 modalities: Sequence[str] | None = None, backend: str | None = None) -> None:
        super().__init__()
        owner = "ModalityNoiseDropout"
        if isinstance(p_drop, Tensor):
            raise TypeError(f"{owner}: argument 'p_drop' expected a number in [0, 1]; pass "
                            f"per-sample (B,) probabilities to forward(p_drop=...), got a tensor "
                            f"of shape {tuple(p_drop.shape)}")
        if isinstance(p_drop, bool) or not isinstance(p_drop, (int, float)) \
                or not 0.0 <= p_drop <= 1.0:
            raise ValueError(f"{owner}: argument 'p_drop' expected a probability in [0, 1], "
                             f"got {p_drop!r}")
        if isinstance(min_keep, bool) or not isinstance(min_keep, int) or min_keep < 0:
            raise ValueError(f"{owner}: argument 'min_keep' expected an int >= 0, got {min_keep!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)
                                 or not 0 <= seed < 2**63):
            raise ValueError(f"{owner}: argument 'seed' expected None or an int in [0, 2**63), "
                             f"got {seed!r}")
        if modalities is not None:
            if isinstance(modalities, str) or not all(isinstance(m, str) for m in modalities) \
                    or len(set(modalities)) != len(modalities) or not len(modalities):
                raise ValueError(f"{owner}: argument 'modalities' expected a non-empty sequence "
                                 f"of distinct names, got {modalities!r}")
        self.p_drop, self.sigma, self.min_keep = float(p_drop), _check_sigma(sigma), min_keep
        self.modalities = tuple(modalities) if modalities is not None else None
        self.seed = int(torch.randint(0, 2**62, ()).item()) if seed is None else seed
        self.backend = _check_backend(owner, backend)
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.last_sigma: dict[str, Tensor] = {}

    def forward(self, inputs: Mapping[str, Tensor], mask: Tensor | None = None,
                p_drop: Tensor | None = None) -> tuple[dict[str, Tensor], Tensor]:
        """Augment a batch: ``inputs`` maps modality name -> (B, ...) tensor, ``mask`` (B, M)
        bool presence (None = all present). ``p_drop`` (B,) overrides the module's drop
        probability per sample. Returns (new inputs, new mask); in eval mode the inputs
        unchanged. Advances ``step`` in training."""
        if not isinstance(inputs, Mapping):
            raise TypeError(f"ModalityNoiseDropout: argument 'inputs' expected a mapping of "
                            f"modality name -> tensor (e.g. a dict), got {type(inputs).__name__}")
        names = self.modalities or tuple(inputs.keys())
        if mask is None:
            first = inputs[names[0]]
            mask = torch.ones(first.shape[0], len(names), dtype=torch.bool, device=first.device)
        if not self.training:
            return dict(inputs), mask
        out, kept, self.last_sigma = ops.modality_noise_dropout(
            inputs, mask, self.p_drop if p_drop is None else p_drop, self.sigma, self.seed,
            self.step, min_keep=self.min_keep, modalities=names, backend=self.backend)
        self.step += 1
        return out, kept

    def get_extra_state(self) -> dict[str, Any]:
        """The seed, saved in ``state_dict()`` beside the ``step`` buffer."""
        return {"seed": self.seed}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore the seed from ``load_state_dict()`` (resume continues the same stream)."""
        self.seed = int(state["seed"])

    def extra_repr(self) -> str:
        return (f"p_drop={self.p_drop}, sigma={self.sigma}, min_keep={self.min_keep}, "
                f"seed={self.seed}")


class CertifiedMargin(nn.Module):
    """Certified radius of h = sum_m z_m + b from per-modality logits and a Lipschitz table.

    Args:
        lip: (M,), (M, C) per-class (CRMT's table; pairs bounded by tau_y + tau_k) or
            (M, C, C) per class pair Lipschitz constants of x^(m) -> z^(m)_y - z^(m)_k (a
            buffer; replace it with ``set_lipschitz`` after estimating them). See
            :func:`mmfast.ops.certified_margin`.
        p: perturbation norm; rival: "min" (sound) or "top" (CRMT's training rule).
    """

    def __init__(self, lip: Tensor, p: float = 2.0, rival: str = "min",
                 backend: str | None = None) -> None:
        super().__init__()
        if not isinstance(lip, Tensor) or lip.dim() not in (1, 2, 3):
            raise ValueError(f"CertifiedMargin: argument 'lip' expected an (M,), (M, C) or "
                             f"(M, C, C) tensor, got {getattr(lip, 'shape', lip)!r}")
        if not (isinstance(p, (int, float)) and p >= 1):
            raise ValueError(f"CertifiedMargin: argument 'p' expected a number >= 1 or "
                             f"math.inf, got {p!r}")
        if rival not in ("min", "top"):
            raise ValueError(f"CertifiedMargin: argument 'rival' expected one of ('min', 'top'), "
                             f"got {rival!r}")
        self.p, self.rival, self.backend = p, rival, _check_backend("CertifiedMargin", backend)
        self.register_buffer("lip", lip.detach().clone())

    def set_lipschitz(self, lip: Tensor) -> None:
        """Replace the Lipschitz table (a detached copy on the buffer's device)."""
        self.lip = lip.detach().clone().to(self.lip.device)

    def forward(self, z: Tensor, target: Tensor, mask: Tensor | None = None,
                bias: Tensor | None = None) -> ops.CertifiedMarginResult:
        """-> (radius, margin, runner_up), see :func:`mmfast.ops.certified_margin`."""
        return ops.certified_margin(z, target, self.lip.to(z.device), mask, bias, self.p,
                                    self.rival, backend=self.backend)

    def certified_accuracy(self, z: Tensor, target: Tensor, radii: Sequence[float],
                           mask: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        """Fraction (len(radii),) float32 of samples certified at each radius r (radius >= r,
        correctly classified); NaN for an empty batch. ``target`` should be the labels."""
        radius = self(z, target, mask, bias).radius
        return ops.certified_accuracy(radius, list(radii))


class SubsetEvaluator(nn.Module):
    """Accuracy of a late-fusion model on every missing-modality pattern, from one pass.

    Call ``update(z, target, present)`` per batch with per-modality logits z (B, M, C), then
    ``compute()`` for {pattern name: accuracy}. Counts are exact integers across batches.

    Args:
        modalities: names of the M modalities (the columns of z).
        subsets: (S, M) bool patterns (default all 2^M - 1 non-empty ones).
        weight: fixed (M,) fusion weights (copied), or
        fusion: a :class:`MaskedFusion` (or any object with ``modality_weight()``) whose
            current weights are read at every update: the evaluator follows learned weights
            (it does not own the module: its parameters are not in this state_dict).
        backend: force an ops backend (default auto).
    """

    def __init__(self, modalities: Sequence[str], subsets: Tensor | None = None,
                 weight: Tensor | None = None, fusion: MaskedFusion | None = None,
                 backend: str | None = None) -> None:
        super().__init__()
        if weight is not None and fusion is not None:
            raise ValueError("SubsetEvaluator: pass 'weight' (fixed) or 'fusion' (followed), "
                             "not both")
        if fusion is not None and not callable(getattr(fusion, "modality_weight", None)):
            raise TypeError(f"SubsetEvaluator: argument 'fusion' expected a MaskedFusion (an "
                            f"object with modality_weight()), got {type(fusion).__name__}")
        self.modalities = tuple(modalities)
        subsets = ops.all_subsets(len(self.modalities)) if subsets is None else subsets.bool()
        self.register_buffer("subsets", subsets)
        self.register_buffer("weight", None if weight is None else weight.detach().clone())
        self.register_buffer("correct", torch.zeros(len(subsets), dtype=torch.int64))
        self.register_buffer("total", torch.zeros((), dtype=torch.int64))
        self.__dict__["fusion"] = fusion  # followed, not a submodule
        self.backend = _check_backend("SubsetEvaluator", backend)

    @property
    def names(self) -> list[str]:
        """Pattern names in subset order, e.g. ["video", "audio", "video+audio", ...]."""
        return ["+".join(m for m, on in zip(self.modalities, row) if on)
                for row in self.subsets.tolist()]

    def reset(self) -> None:
        """Zero the accumulated counts."""
        self.correct.zero_()
        self.total.zero_()

    def current_weight(self) -> Tensor | None:
        """The fusion weights used now: the followed module's, else the fixed ones."""
        if self.fusion is not None:
            w = self.fusion.modality_weight()
            return None if w is None else w.detach()
        return self.weight

    @torch.no_grad()
    def update(self, z: Tensor, target: Tensor, present: Tensor | None = None) -> Tensor:
        """Add a batch (z (B, M, C), target (B,) int64, present (B, M) bool or None); returns
        its per-subset accuracy (S,)."""
        acc = ops.subset_accuracy(z, target, self.subsets.to(z.device), self.current_weight(),
                                  present, backend=self.backend)
        B = z.shape[0]
        if B:
            self.correct += torch.round(acc * B).to(torch.int64).to(self.correct.device)
            self.total += B
        return acc

    forward = update

    def compute(self) -> dict[str, float]:
        """{pattern name: accuracy over every batch added}; NaN for every pattern before any
        sample was added (as ``ops.subset_accuracy`` on an empty batch)."""
        total = int(self.total)
        if total == 0:
            return {n: math.nan for n in self.names}
        return {n: int(c) / total for n, c in zip(self.names, self.correct.tolist())}
