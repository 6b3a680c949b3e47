"""The papers' claims, checked on this data: each returns holds / does not hold + numbers.

A claim compares methods by name (the ``method`` of each run's train_stats.json). When a
method or a protocol result is absent the claim is "not evaluated" with the reason, never
silently dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["Claim", "CLAIMS", "check_claims"]

Results = Mapping[str, Mapping]


@dataclass(frozen=True)
class Verdict:
    status: str  # "holds" | "does not hold" | "not evaluated"
    evidence: str


@dataclass(frozen=True)
class Claim:
    source: str
    statement: str
    check: Callable[[Results], Verdict]


def _missing(results: Results, methods: tuple[str, ...], protocol: str) -> str | None:
    for m in methods:
        if m not in results:
            return f"method {m!r} was not run"
        r = results[m].get(protocol)
        if not isinstance(r, Mapping):
            return f"{m!r} has no {protocol} results"
        if "skipped" in r:
            return f"{m!r}: {protocol} skipped ({r['skipped']})"
    return None


def _better(name: str, a: float, b: float, other: str, what: str, strict=True) -> Verdict:
    ok = a > b if strict else a >= b
    return Verdict("holds" if ok else "does not hold",
                   f"{name} {a:.3f} vs {other} {b:.3f} ({what})")


def _mean(xs) -> float:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def _mean_missing_subsets(r: Mapping, without: str | None = None) -> float:
    """Mean accuracy over the subsets that miss at least one modality (``without``: only the
    subsets that miss that modality)."""
    full = max(r["subsets"], key=lambda s: s.count("+"))
    keep = [(s, a) for s, a in zip(r["subsets"], r["accuracy"]) if s != full]
    if without is not None:
        keep = [(s, a) for s, a in keep if without not in s.split("+")]
    return _mean(a for _, a in keep)


def missing_claim(method: str, rival: str, without: str | None = None
                  ) -> Callable[[Results], Verdict]:
    def check(results: Results) -> Verdict:
        why = _missing(results, (method, rival), "missing_subsets")
        if why:
            return Verdict("not evaluated", why)
        a = _mean_missing_subsets(results[method]["missing_subsets"], without)
        b = _mean_missing_subsets(results[rival]["missing_subsets"], without)
        which = f"subsets without {without}" if without else "subsets missing a modality"
        return _better(method, a, b, rival, f"mean accuracy over {which}")
    return check


def noise_claim(method: str, rival: str, kind: str = "gaussian"
                ) -> Callable[[Results], Verdict]:
    def check(results: Results) -> Verdict:
        why = _missing(results, (method, rival), "noise")
        if why:
            return Verdict("not evaluated", why)

        def mean_noisy(r):  # mean over corrupted modalities (and "all") x levels > 0
            levels = r[kind]["sigmas" if kind == "gaussian" else "densities"]
            return _mean(a for curve in r[kind]["accuracy"].values()
                         for lvl, a in zip(levels, curve) if lvl > 0)
        a, b = (mean_noisy(results[m]["noise"]) for m in (method, rival))
        return _better(method, a, b, rival, f"mean accuracy under {kind} noise, every corrupted "
                       "modality and level > 0")
    return check


def missing_rate_claim(method: str, rival: str) -> Callable[[Results], Verdict]:
    def check(results: Results) -> Verdict:
        why = _missing(results, (method, rival), "missing_rate")
        if why:
            return Verdict("not evaluated", why)

        def area(r):  # mean over modalities and rates of the accuracy curve
            return _mean(a for curve in r["accuracy"].values() for a in curve)
        a, b = area(results[method]["missing_rate"]), area(results[rival]["missing_rate"])
        return _better(method, a, b, rival, "mean accuracy over modalities x missing rates")
    return check


def attack_claim(method: str, rival: str, kind: str) -> Callable[[Results], Verdict]:
    def check(results: Results) -> Verdict:
        why = _missing(results, (method, rival), "attack")
        if why:
            return Verdict("not evaluated", why)

        def mean_attacked(r):
            pairs = zip(r["eps"], r[kind]["accuracy"]["joint"])
            return _mean(a for e, a in pairs if e > 0)
        a = mean_attacked(results[method]["attack"])
        b = mean_attacked(results[rival]["attack"])
        eps = [e for e in results[method]["attack"]["eps"] if e > 0]
        return _better(method, a, b, rival,
                       f"mean {kind.upper()} accuracy, joint l2 budget, eps in {eps}")
    return check


def certified_claim(method: str, rival: str) -> Callable[[Results], Verdict]:
    def check(results: Results) -> Verdict:
        why = _missing(results, (method, rival), "certify")
        if why:
            return Verdict("not evaluated", why)
        ours, theirs = (results[m]["certify"]["estimators"] for m in (method, rival))
        shared = [e for e in ours if e in theirs]
        sound = [e for e in shared if ours[e]["kind"] == "sound"]
        if not shared:
            return Verdict("not evaluated", "no Lipschitz estimator in common")
        est = (sound or shared)[0]
        radii = results[method]["certify"]["radii"]

        def mean_cert(entry):
            return _mean(a for r, a in zip(radii, entry["min"]["certified_accuracy"]) if r > 0)
        a, b = mean_cert(ours[est]), mean_cert(theirs[est])
        return _better(method, a, b, rival, f"mean certified accuracy over radii "
                       f"{[r for r in radii if r > 0]}, {est} ({ours[est]['kind']}) Lipschitz, "
                       f"rival rule min")
    return check


def clean_claim(method: str, rival: str) -> Callable[[Results], Verdict]:
    def check(results: Results) -> Verdict:
        for m in (method, rival):
            if m not in results:
                return Verdict("not evaluated", f"method {m!r} was not run")
        a, b = (results[m].get("clean_accuracy", float("nan")) for m in (method, rival))
        return _better(method, a, b, rival, "clean accuracy, all modalities")
    return check


CLAIMS: list[Claim] = [
    Claim("UME-MMA", "UME-MMA beats joint training when a modality is missing",
          missing_claim("ume_mma", "joint")),
    Claim("UME-MMA", "UME-MMA beats joint training across missing rates",
          missing_rate_claim("ume_mma", "joint")),
    Claim("UME-MMA", "Uni-modal pre-training + augmentation (UME-MMA) beats plain late fusion "
          "when a modality is missing", missing_claim("ume_mma", "late")),
    Claim("CRMT", "CRMT raises certified accuracy over joint training",
          certified_claim("crmt", "joint")),
    Claim("CRMT", "CRMT raises PGD-l2 accuracy over joint training",
          attack_claim("crmt", "joint", "pgd")),
    Claim("CRMT", "CRMT raises FGM accuracy over joint training",
          attack_claim("crmt", "joint", "fgm")),
    Claim("CRMT", "CRMT improves clean accuracy over joint training",
          clean_claim("crmt", "joint")),
    Claim("UDML", "Noise-aware, bias-corrected dynamic fusion (UDML) is more robust to Gaussian "
          "noise than plain late fusion", noise_claim("udml", "late", "gaussian")),
    Claim("DMRNet", "DMRNet beats joint training when a modality is missing",
          missing_claim("dmrnet", "joint")),
    Claim("MMANet", "MMANet's student beats joint training when a modality is missing",
          missing_claim("mmanet", "joint")),
    Claim("One-stage distillation", "Distilling the privileged modality (video) beats joint "
          "training when that modality is missing", missing_claim("distill", "joint", "video")),
    Claim("TRML", "Generating the missing modality (TRML) beats late fusion when a modality is "
          "missing", missing_claim("trml", "late")),
]


def check_claims(results: Results) -> list[tuple[Claim, Verdict]]:
    """Every claim in :data:`CLAIMS` with its verdict on ``{method: eval result}``."""
    return [(claim, claim.check(results)) for claim in CLAIMS]


# Smoothing vs Lipschitz certificates (issue 15), kept in their own module.
from mmfast.eval.certificate_claims import certificate_claims  # noqa: E402

CLAIMS.extend(certificate_claims())
