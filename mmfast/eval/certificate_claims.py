"""Claims rows comparing CRMT's Lipschitz certificate with randomized smoothing.

Every comparison is on the same test rows (the smoothing protocol's seeded subset, on which it
also evaluates the model's own Lipschitz certificate) and the same l2 radii; the methods share
the training budget of the run (TrainConfig). The kinds differ and the evidence says so: a
sound Lipschitz certificate is deterministic for the base model; smoothing holds with
probability 1 - alpha for the smoothed classifier.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mmfast.eval.claims import Verdict

__all__ = ["certificate_claims"]

Results = Mapping[str, Mapping]


def _smoothing(results: Results, method: str) -> Mapping | str:
    if method not in results:
        return f"method {method!r} was not run"
    r = results[method].get("smoothing")
    if not isinstance(r, Mapping):
        return f"{method!r} has no smoothing results"
    if "skipped" in r:
        return f"{method!r}: smoothing skipped ({r['skipped']})"
    return r


def _mean_positive(radii, values) -> float:
    picked = [v for r, v in zip(radii, values) if r > 0 and v is not None]
    return sum(picked) / len(picked) if picked else float("nan")


def _sound_lipschitz(r: Mapping) -> tuple[str, Mapping] | None:
    tables = r.get("lipschitz_same_rows") or {}
    for name, est in tables.items():
        if isinstance(est, Mapping) and est.get("kind") == "sound":
            return name, est
    return None


def _not_evaluated(why: str) -> Verdict:
    from mmfast.eval.claims import Verdict  # claims.py imports this module at its end

    return Verdict("not evaluated", why)


def _verdict(a: float, b: float, what_a: str, what_b: str, radii, r: Mapping) -> Verdict:
    from mmfast.eval.claims import Verdict

    positive = [x for x in radii if x > 0]
    evidence = (f"{what_a} {a:.3f} vs {what_b} {b:.3f} (mean certified accuracy over l2 radii "
                f"{positive}, {r['num_samples']} test rows; smoothing: n = {r['config']['n']}, "
                f"alpha = {r['config']['alpha']:g}, holds w.p. 1 - alpha for the smoothed "
                f"classifier)")
    return Verdict("holds" if a > b else "does not hold", evidence)


def smoothing_vs_lipschitz(smoothed: str, lipschitz: str):
    """``smoothed``'s smoothing certificate beats ``lipschitz``'s sound Lipschitz one."""

    def check(results: Results) -> Verdict:
        ours, theirs = _smoothing(results, smoothed), _smoothing(results, lipschitz)
        for r in (ours, theirs):
            if isinstance(r, str):
                return _not_evaluated(r)
        sound = _sound_lipschitz(theirs)
        if sound is None:
            return _not_evaluated(f"{lipschitz!r} has no sound Lipschitz table")
        name, est = sound
        radii = ours["radii"]
        a = _mean_positive(radii, ours["joint_l2"]["certified_accuracy"])
        b = _mean_positive(theirs["radii"], est["certified_accuracy"])
        return _verdict(a, b, f"{smoothed} smoothed", f"{lipschitz} Lipschitz ({name}, sound)",
                        radii, ours)

    return check


def smoothing_vs_smoothing(method: str, rival: str):
    """``method``'s smoothed certified accuracy beats ``rival``'s (same sigma and draws)."""

    def check(results: Results) -> Verdict:
        ours, theirs = _smoothing(results, method), _smoothing(results, rival)
        for r in (ours, theirs):
            if isinstance(r, str):
                return _not_evaluated(r)
        radii = ours["radii"]
        a = _mean_positive(radii, ours["joint_l2"]["certified_accuracy"])
        b = _mean_positive(theirs["radii"], theirs["joint_l2"]["certified_accuracy"])
        return _verdict(a, b, f"{method} smoothed", f"{rival} smoothed", radii, ours)

    return check


def certificate_claims() -> list:  # list[Claim]
    """The claims rows (``mmfast.eval.claims.Claim``) of this module."""
    from mmfast.eval.claims import Claim

    return [
        Claim("Cohen et al. 2019 vs CRMT", "Randomized smoothing of the CRMT model certifies "
              "more than CRMT's sound Lipschitz bound (same model, rows and l2 radii)",
              smoothing_vs_lipschitz("crmt", "crmt")),
        Claim("Cohen et al. 2019 vs CRMT", "Gaussian-noise training + smoothing (gaussian_aug) "
              "certifies more than CRMT's sound Lipschitz bound (same rows, radii, training "
              "budget)", smoothing_vs_lipschitz("gaussian_aug", "crmt")),
        Claim("Cohen et al. 2019", "Training on the smoothing noise (gaussian_aug) raises the "
              "smoothed certified accuracy over smoothing CRMT", smoothing_vs_smoothing(
                  "gaussian_aug", "crmt")),
    ]
