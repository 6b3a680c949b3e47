"""Claims rows comparing CRMT's Lipschitz certificate with randomized smoothing (issue 15).

Every comparison is on the same test rows (the smoothing protocol's seeded subset, on which it
also evaluates the model's own Lipschitz certificate) and the same l2 radii, one row per radius
(no average hides a crossover); verdicts over seeds as every claim
(:func:`mmfast.eval.stats.paired_verdict`). The kinds differ and the statements say so: a sound
Lipschitz certificate is deterministic for the base model; smoothing holds with probability
1 - alpha for the smoothed classifier.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # claims.py imports this module at its end: import it lazily here
    from mmfast.eval.claims import Claim, Runs

__all__ = ["certificate_claims"]

_CITE = ("Cohen, Rosenfeld and Kolter 2019, Theorem 1 (not in shared/METHODS.md); the "
         "comparison with CRMT's certificate is mmfast's (issue 15)")


def _smoothing(res: Mapping) -> Mapping | None:
    r = res.get("smoothing")
    return r if isinstance(r, Mapping) and "radii" in r else None


def _at(values, radii, i: int, radius: float) -> float | None:
    if values is None or i >= len(radii) or radii[i] != radius or i >= len(values):
        return None
    return values[i]


def _smoothed(i: int, radius: float):
    def value(res: Mapping) -> float | None:
        r = _smoothing(res)
        if r is None:
            return None
        return _at(r["joint_l2"]["certified_accuracy"], r["radii"], i, radius)
    return value


def _lipschitz(i: int, radius: float):
    """The run's sound Lipschitz certificate on the smoothing rows (None without one)."""
    def value(res: Mapping) -> float | None:
        r = _smoothing(res)
        if r is None:
            return None
        for est in (r.get("lipschitz_same_rows") or {}).values():
            if isinstance(est, Mapping) and est.get("kind") == "sound":
                return _at(est["certified_accuracy"], r["radii"], i, radius)
        return None
    return value


def _per_radius(method_reads, rival_reads, what: str):
    """Metrics builder: one row per smoothing radius > 0 of the method's first run."""
    def metrics(runs: Runs, method: str) -> list:
        from mmfast.eval.claims import Metric

        first = next((_smoothing(r) for r in runs.get(method, {}).values()
                      if _smoothing(r) is not None), None)
        if first is None:
            return [Metric(f"certified accuracy ({what})", "smoothing", lambda res: None)]
        return [Metric(f"certified accuracy at l2 radius {radius:g} ({what})", "smoothing",
                       method_reads(i, radius), rival_value=rival_reads(i, radius))
                for i, radius in enumerate(first["radii"]) if radius > 0]
    return metrics


def certificate_claims() -> list[Claim]:
    """The claims rows of this module (appended to ``mmfast.eval.claims.CLAIMS``)."""
    from mmfast.eval.claims import Claim

    return [
        Claim("Cohen et al. 2019 vs CRMT", "Randomized smoothing of the CRMT model certifies more "
              "than CRMT's sound Lipschitz bound (same model, rows and l2 radii; smoothing holds "
              "w.p. 1 - alpha for the smoothed classifier)", "crmt", "crmt",
              _per_radius(_smoothed, _lipschitz, "smoothed vs sound Lipschitz"), _CITE,
              matched=False),
        Claim("Cohen et al. 2019 vs CRMT", "Gaussian-noise training + smoothing (gaussian_aug) "
              "certifies more than CRMT's sound Lipschitz bound (same rows, radii and training "
              "budget)", "gaussian_aug", "crmt",
              _per_radius(_smoothed, _lipschitz, "gaussian_aug smoothed vs crmt Lipschitz"),
              _CITE, matched=False),
        Claim("Cohen et al. 2019", "Training on the smoothing noise (gaussian_aug) raises the "
              "smoothed certified accuracy over smoothing CRMT (same sigma and draws)",
              "gaussian_aug", "crmt", _per_radius(_smoothed, _smoothed, "both smoothed"), _CITE,
              matched=False),
    ]
