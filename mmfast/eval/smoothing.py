"""Randomized smoothing per modality (Cohen, Rosenfeld and Kolter 2019), any mmfast model.

The smoothed classifier g(x) = argmax_c P(f(x + delta) = c), delta_m ~ N(0, sigma_m^2 I) on
each modality m (anisotropic: one noise level per modality, in input units, the units of the
attack budgets eps and of the Lipschitz radii). CERTIFY: n0 draws pick the class c_A, n fresh
draws count it, p_A >= p_lower (one-sided Clopper-Pearson at level alpha); g abstains when
p_lower < 1/2, else with R = Phi^-1(p_lower), with probability >= 1 - alpha over the draws:

- all modalities attacked: g(x + d) = c_A for every d with sqrt(sum_m ||d_m||^2 / sigma_m^2)
  < R (the norm weighted by 1/sigma_m), hence for every plain-l2 ||d|| < min_m sigma_m R;
- only modality m attacked: for every ||d_m|| < sigma_m R.

The guarantee is for g (the smoothed classifier, computed by sampling), not the base model f.
Noise comes from ``mmfast.ops.noisy_modality_dropout`` (counter-based Philox; p_drop = 0, or 1
to zero a modality the row lacks): the
draws of batch b, phase (0: select, 1: estimate), modality j use ``seed`` and offset
``(2 b + phase) M + j``, so a certificate is reproducible from (seed, n0, n, draw_batch).
Draws are flattened over (row, draw) pairs into batches of ``draw_batch`` inputs.

``mmfast eval --protocols smoothing`` runs :func:`smoothing`; ``EvalConfig.smoothing`` holds
:class:`SmoothingConfig` overrides.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

import torch
from torch import Tensor, nn

from mmfast import ops
from mmfast.eval.adversarial import attack_subset
from mmfast.eval.common import (
    EvalConfig,
    model_modalities,
    register_protocol,
    split_inputs,
)

__all__ = ["SmoothingConfig", "SmoothedClassifier", "Certificate", "clopper_pearson_lower",
           "smoothing", "smoothing_config", "GUARANTEE", "ABSTAIN"]

#: Prediction value of an abstention.
ABSTAIN = -1

#: The kind of guarantee, stated in the report.
GUARANTEE = ("probabilistic: holds with probability >= 1 - alpha over the noise draws, for the "
             "smoothed classifier g (majority vote of the model under Gaussian noise), not for "
             "the base model")


@dataclass(frozen=True)
class SmoothingConfig:
    """Sampling budget of the smoothing certificate (defaults: Cohen et al.'s n0, n, alpha).

    sigma: noise std in input units, one number for every modality or {modality: std}.
    samples: test rows certified (a seeded random subset, as the attacks); None = all.
    draw_batch: noisy inputs per model call. amp: bfloat16 / float16 autocast on the forward.
    patterns: also smooth every missing-modality pattern from the same draws (models whose
    modality logits reproduce their predictions), for the certificate against k missing
    modalities and an l2 perturbation of the rest.
    """

    sigma: float | Mapping[str, float] = 0.12
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    samples: int | None = None
    draw_batch: int = 1024
    amp: bool = False
    # sigma Phi^-1(alpha^(1/n)) caps the radius: 0.18 at sigma 0.12, n = 100; 0.46 at n = 1e5
    radii: tuple[float, ...] = (0.0, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5)
    patterns: bool = True

    def __post_init__(self) -> None:
        for name in ("n0", "n", "draw_batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SmoothingConfig.{name}: expected an int >= 1, got {value!r}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"SmoothingConfig.alpha: expected a value in (0, 1), "
                             f"got {self.alpha!r}")
        levels = self.sigma.values() if isinstance(self.sigma, Mapping) else [self.sigma]
        bad = [s for s in levels if not (isinstance(s, int | float) and math.isfinite(s)
                                         and s >= 0)]
        if bad:
            raise ValueError(f"SmoothingConfig.sigma: expected finite values >= 0, got {bad}")
        if self.samples is not None and self.samples < 1:
            raise ValueError(f"SmoothingConfig.samples: expected None or an int >= 1, "
                             f"got {self.samples!r}")

    def sigmas(self, names: tuple[str, ...]) -> dict[str, float]:
        """{modality: sigma} for ``names`` (every modality needs one)."""
        if not isinstance(self.sigma, Mapping):
            return {m: float(self.sigma) for m in names}
        missing = [m for m in names if m not in self.sigma]
        if missing:
            raise ValueError(f"SmoothingConfig.sigma: expected a value for modalities "
                             f"{list(names)}, missing {missing}")
        return {m: float(self.sigma[m]) for m in names}

    def to_dict(self) -> dict:
        return asdict(self)


def smoothing_config(cfg: EvalConfig) -> SmoothingConfig:
    """The :class:`SmoothingConfig` of ``cfg.smoothing`` (a dict of overrides, or None)."""
    values = dict(getattr(cfg, "smoothing", None) or {})
    known = {f.name for f in fields(SmoothingConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"EvalConfig.smoothing: unknown keys {unknown}; expected some of "
                         f"{sorted(known)}")
    if isinstance(values.get("radii"), list):
        values["radii"] = tuple(values["radii"])
    return SmoothingConfig(**values)


def clopper_pearson_lower(successes: Tensor, trials: int, alpha: float) -> Tensor:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion, float64."""
    k = successes.double().cpu().numpy()
    from scipy import stats  # the data extra's package, imported when a bound is computed

    lower = stats.beta.ppf(alpha, k, trials - k + 1)
    return torch.from_numpy(lower).nan_to_num(0.0).where(torch.from_numpy(k) > 0,
                                                           torch.tensor(0.0, dtype=torch.float64))


@dataclass
class Certificate:
    """CERTIFY's answer per row (and per pattern when patterns were smoothed).

    prediction: c_A, or ABSTAIN (-1) when p_lower < 1/2. selected: c_A (the n0 draws' top
    class, also when abstaining). hits: draws (of n) that gave c_A.
    p_lower: the Clopper-Pearson bound.
    radius: R = Phi^-1(p_lower) in the 1/sigma-weighted norm (0 when abstaining).
    Shapes: (N,) for the full input, or (S, N) for ``subsets`` (S, M).
    """

    prediction: Tensor
    selected: Tensor
    hits: Tensor
    p_lower: Tensor
    radius: Tensor
    sigma: dict[str, float]
    subsets: Tensor | None = None

    def l2_radius(self, modalities: Tensor | None = None) -> Tensor:
        """Plain-l2 radius min_m sigma_m R over the attacked modalities (bool (M,) or
        (S, M); default all)."""
        s = torch.tensor(list(self.sigma.values()), dtype=torch.float64)
        if modalities is None:
            modalities = torch.ones(len(s), dtype=torch.bool)
        smallest = torch.where(modalities, s, torch.tensor(math.inf, dtype=torch.float64))
        smallest = smallest.min(dim=-1).values
        if smallest.dim():
            smallest = smallest[:, None]
        return self.radius * smallest

    def modality_radius(self, name: str) -> Tensor:
        """l2 radius when only modality ``name`` is attacked: sigma_m R."""
        return self.radius * self.sigma[name]


class SmoothedClassifier:
    """Gaussian smoothing of ``model`` with per-modality sigmas, sampled in large batches."""

    def __init__(self, model: nn.Module, sigma: Mapping[str, float], *, seed: int = 0,
                 draw_batch: int = 1024, device: str | torch.device = "cpu",
                 backend: str | None = None, amp: bool = False):
        self.model = model
        self.names = model_modalities(model)
        self.sigma = {m: float(sigma[m]) for m in self.names}
        self.seed, self.draw_batch, self.device = seed, draw_batch, torch.device(device)
        self.backend, self.amp = backend, amp
        self.num_classes = int(model.num_classes)

    def noisy(self, x: Mapping[str, Tensor], mask: Tensor, batch: int, phase: int
              ) -> dict[str, Tensor]:
        """One batch of noisy inputs, absent modalities zeroed: the op's p_drop is 0 where
        the modality is present and 1 where it is absent (filled with 0, never read), so one
        pass both noises and drops. Stream: (seed, batch, phase, modality)."""
        M = len(self.names)
        return {m: ops.noisy_modality_dropout(
            x[m], (~mask[:, j]).to(torch.float32), self.sigma[m], seed=self.seed,
            offset=(2 * batch + phase) * M + j, backend=self.backend)[0]
            for j, m in enumerate(self.names)}

    def _autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.device.type == "cpu" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    @torch.no_grad()
    def counts(self, inputs: Mapping[str, Tensor], mask: Tensor, num: int, phase: int,
               subsets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Class counts over ``num`` noisy draws per row: (N, C) of the model's prediction
        and, when ``subsets`` (S, M) is given, (S, N, C) of the fused modality logits of each
        pattern, from the same draws (one encoder pass per draw)."""
        N, C = mask.shape[0], self.num_classes
        S = 0 if subsets is None else subsets.shape[0]
        counts = torch.zeros((1 + S) * N * C, dtype=torch.int64, device=self.device)
        x_all = {m: inputs[m].to(self.device) for m in self.names}
        mask_all = mask.to(self.device)
        pats = None if subsets is None else subsets.to(self.device)
        for b, start in enumerate(range(0, N * num, self.draw_batch)):
            idx = torch.arange(start, min(start + self.draw_batch, N * num), device=self.device)
            row = idx // num
            m = mask_all.index_select(0, row)
            x = self.noisy({k: v.index_select(0, row) for k, v in x_all.items()}, m, b, phase)
            with self._autocast():
                out = self.model(x, m)
            flat = row * C + out.logits.argmax(1)
            if pats is not None:
                z = out.modality_logits.float()
                pred = ops.subset_logits(z, pats, present=m, backend=self.backend).argmax(-1)
                pat = torch.arange(1, 1 + S, device=self.device)[:, None]
                flat = torch.cat([flat, ((pat * N + row[None]) * C + pred).reshape(-1)])
            counts.index_add_(0, flat, torch.ones_like(flat))
        counts = counts.view(1 + S, N, C).cpu()
        return counts[0], (None if pats is None else counts[1:])

    def certify(self, inputs: Mapping[str, Tensor], mask: Tensor, n0: int, n: int,
                alpha: float, subsets: Tensor | None = None
                ) -> tuple[Certificate, Certificate | None]:
        """Cohen et al.'s CERTIFY on every row, and on every pattern in ``subsets`` (from the
        same draws) when given."""
        select = self.counts(inputs, mask, n0, 0, subsets)
        estimate = self.counts(inputs, mask, n, 1, subsets)
        certs = [None if c0 is None else self._certificate(c0, c, n, alpha, subsets)
                 for c0, c in zip(select, estimate)]
        return certs[0], certs[1]

    def _certificate(self, select: Tensor, estimate: Tensor, n: int, alpha: float,
                     subsets: Tensor | None) -> Certificate:
        chosen = select.argmax(-1)
        hits = estimate.gather(-1, chosen.unsqueeze(-1)).squeeze(-1)
        p_lower = clopper_pearson_lower(hits, n, alpha)
        certified = p_lower >= 0.5
        radius = torch.where(certified, torch.special.ndtri(p_lower),
                             torch.zeros((), dtype=torch.float64))
        prediction = torch.where(certified, chosen, torch.full_like(chosen, ABSTAIN))
        return Certificate(prediction, chosen, hits, p_lower, radius, dict(self.sigma),
                           None if subsets is None else subsets.cpu())


# ------------------------------------------------------------------------------ protocol
def certified_accuracy(correct: Tensor, radius: Tensor, radii) -> list[float]:
    """Fraction of rows with a correct, non-abstained prediction and radius >= r, per r."""
    if correct.numel() == 0:
        return [math.nan for _ in radii]
    return [float((correct & (radius >= r)).double().mean()) for r in radii]


def _quantiles(radius: Tensor, ok: Tensor) -> dict[str, float]:
    r = radius[ok]
    if r.numel() == 0:
        return {}
    q = torch.quantile(r.double(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    return dict(zip(("0.25", "0.5", "0.75"), q.tolist()))


@register_protocol("smoothing")
def smoothing(model: nn.Module, data: Mapping[str, Tensor], cfg: EvalConfig) -> dict:
    """Smoothing certificates: certified accuracy vs l2 radius with all modalities attacked
    (plain l2 and the 1/sigma-weighted norm) and with one modality attacked; with
    ``patterns``, the certificate against k missing modalities and an l2 perturbation of the
    rest; on the same rows, the model's own Lipschitz certificate when it has one."""
    from mmfast.eval.missing_certificate import (
        combined_by_k,
        lipschitz_same_rows,
        pattern_path,
    )

    sc = smoothing_config(cfg)
    names = model_modalities(model)
    sigma = sc.sigmas(names)
    inputs, mask, label = split_inputs(model, data)
    rows = _rows(label.shape[0], sc, cfg)
    inputs = {m: x[rows] for m, x in inputs.items()}
    mask, label = mask[rows], label[rows]
    smoother = SmoothedClassifier(model, sigma, seed=cfg.seed, draw_batch=sc.draw_batch,
                                  device=cfg.device, backend=cfg.backend, amp=sc.amp)
    subsets, why = (pattern_path(model, inputs, mask, cfg) if sc.patterns
                    else (None, "SmoothingConfig.patterns is off"))
    start = time.perf_counter()
    cert, pcert = smoother.certify(inputs, mask, sc.n0, sc.n, sc.alpha, subsets)
    seconds = time.perf_counter() - start
    correct = cert.prediction == label
    radii = list(sc.radii)
    result = {
        "guarantee": GUARANTEE, "config": sc.to_dict(), "sigma": sigma, "radii": radii,
        "num_samples": int(label.numel()), "seed": cfg.seed,
        "draws_per_second": (sc.n0 + sc.n) * label.numel() / max(seconds, 1e-9),
        "time_s": seconds,
        "abstain_rate": float((cert.prediction == ABSTAIN).double().mean()),
        "smoothed_accuracy": float(correct.double().mean()),
        "joint_l2": {"certified_accuracy": certified_accuracy(correct, cert.l2_radius(), radii),
                     "quantiles": _quantiles(cert.l2_radius(), correct)},
        "weighted": {"certified_accuracy": certified_accuracy(correct, cert.radius, radii),
                     "quantiles": _quantiles(cert.radius, correct),
                     "unit": "R = Phi^-1(p_lower) in the norm sqrt(sum_m ||d_m||^2/sigma_m^2)"},
        "per_modality": {m: {"certified_accuracy": certified_accuracy(
            correct, cert.modality_radius(m), radii),
            "quantiles": _quantiles(cert.modality_radius(m), correct)} for m in names},
        "lipschitz_same_rows": lipschitz_same_rows(model, inputs, mask, label, radii, cfg),
    }
    if pcert is None:
        result["missing"] = {"skipped": why}
    else:
        radius = torch.where(pcert.prediction == label[None], pcert.l2_radius(subsets),
                             torch.tensor(-math.inf, dtype=torch.float64))
        result["missing"] = {
            "k": list(range(len(names))),
            "certified_accuracy": [certified_accuracy(r >= 0, r, radii)
                                   for r in combined_by_k(radius, subsets)],
            "norm": "plain l2 over the modalities left (min over their sigma_m of sigma_m R)",
            "patterns": "smoothed from the same draws: fused modality logits per pattern"}
    return result


def _rows(n: int, sc: SmoothingConfig, cfg: EvalConfig) -> Tensor:
    """The certified rows: all, or a seeded subset of ``sc.samples`` (sorted)."""
    if sc.samples is None or sc.samples >= n:
        return torch.arange(n)
    import dataclasses

    return attack_subset(n, dataclasses.replace(cfg, attack_samples=sc.samples))
