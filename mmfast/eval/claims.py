"""The papers' claims, checked on this data over seeds, each against a matched rival.

Input: ``{method: {seed: eval results}}`` (each run's eval.json, grouped by
``mmfast.eval.report.group_runs``); a plain ``{method: eval results}`` counts as seed 0.

A :class:`Claim` compares a method with a rival on one or more :class:`Metric` s; every
metric gives one row of the table with a verdict from :func:`mmfast.eval.stats.paired_verdict`
(holds / within noise / does not hold over seeds; indicative with one seed; not evaluated,
with the reason, when a method or a protocol result is absent). Robustness claims come in two
rows: the absolute accuracy and the **drop from clean** (smaller is better), so a more
accurate model cannot win a robustness claim by its clean accuracy alone. The certified
accuracy is compared **per radius** (one row each), so no average hides a crossover.

The rival of each claim is matched (``mmfast.methods.rivals``): it shares the method's
ingredients (dropout, noise, adversarial or mixup inputs) and lacks its mechanism. The
claims against the earlier, unmatched baselines stay as extra rows (``matched=False``).

Extending: append a ``Claim`` to :data:`CLAIMS` (or call :func:`register_claim`), with
metrics built by the helpers here (``missing_metrics``, ``noise_metrics``, ...) or a new
``Metric(label, protocol, value)`` where ``value(eval_results) -> float | None``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from mmfast.eval.stats import Paired, paired_verdict

__all__ = ["Claim", "Metric", "Verdict", "ClaimRow", "CLAIMS", "register_claim", "check_claims",
           "as_runs", "missing_metrics", "noise_metrics", "attack_metrics", "clean_metric",
           "certified_metrics", "preferred_modality", "uni_modal_attack_drop", "claim_methods"]

Results = Mapping[str, Mapping]  # one run's eval.json
Runs = Mapping[str, Mapping[int, Results]]  # method -> seed -> eval.json


@dataclass(frozen=True)
class Verdict:
    status: str  # one of mmfast.eval.stats.STATUSES
    evidence: str
    paired: Paired | None = None


@dataclass(frozen=True)
class Metric:
    """One number per run, compared between a method's and its rival's runs of one seed.

    ``value(results)`` reads one run's eval results (None when it cannot); ``rival_value``
    reads the rival's (default: the same function; a claim about one method, e.g. which of its
    modalities an attack hurts most, compares two readings of the same runs).
    """

    label: str
    protocol: str | None  # eval key the value needs (None: only clean_accuracy)
    value: Callable[[Results], float | None]
    higher_is_better: bool = True
    rival_value: Callable[[Results], float | None] | None = None


@dataclass(frozen=True)
class Claim:
    """A paper's claim: ``method`` beats ``rival`` on each metric.

    cite: where the paper states it (from shared/METHODS.md; UNVERIFIED where it says so).
    effect: the effect size the paper gives, if any.
    matched: the rival isolates the method's mechanism (False: an earlier baseline row).
    metrics: fixed metrics, or a function of the runs (e.g. one metric per certified radius).
    """

    source: str
    statement: str
    method: str
    rival: str
    metrics: Sequence[Metric] | Callable[[Runs, str], Sequence[Metric]]
    cite: str
    effect: str = "none given"
    matched: bool = True


@dataclass(frozen=True)
class ClaimRow:
    claim: Claim
    metric: str
    verdict: Verdict

    # (claim, verdict) unpacking, as before the rows had a metric
    def __iter__(self):
        return iter((self.claim, self.verdict))


def as_runs(results: Mapping[str, Mapping]) -> dict[str, dict[int, Results]]:
    """``{method: {seed: results}}`` from itself or from ``{method: results}`` (seed 0)."""
    out: dict[str, dict[int, Results]] = {}
    for method, value in results.items():
        grouped = bool(value) and all(isinstance(k, int) for k in value)
        out[method] = dict(value) if grouped else {0: value}
    return out


def check_claims(results: Mapping[str, Mapping], claims: Sequence[Claim] | None = None
                 ) -> list[ClaimRow]:
    """Every claim's rows (one per metric) with verdicts on ``{method: {seed: results}}``."""
    runs = as_runs(results)
    rows = []
    for claim in CLAIMS if claims is None else claims:
        why = _absent(runs, claim)
        metrics = claim.metrics(runs, claim.method) if callable(claim.metrics) else claim.metrics
        if why or not metrics:
            rows.append(ClaimRow(claim, ", ".join(m.label for m in metrics) or "-",
                                 Verdict("not evaluated", why or "nothing to compare")))
            continue
        for metric in metrics:
            rows.append(ClaimRow(claim, metric.label, _compare(runs, claim, metric)))
    return rows


def _absent(runs: Runs, claim: Claim) -> str | None:
    for m in dict.fromkeys((claim.method, claim.rival)):
        if m not in runs:
            return f"method {m!r} was not run"
    return None


def _compare(runs: Runs, claim: Claim, metric: Metric) -> Verdict:
    values: dict[str, dict[int, float | None]] = {}
    sides = ((claim.method, metric.value), (claim.rival, metric.rival_value or metric.value))
    for side, (m, read) in zip(("method", "rival"), sides):
        values[side] = {}
        for seed, res in runs[m].items():
            why = _protocol_missing(res, metric.protocol)
            if why:
                return Verdict("not evaluated", f"{m!r}: {why}")
            values[side][seed] = read(res)
    paired = paired_verdict(values["method"], values["rival"], metric.higher_is_better)
    if paired.status == "not evaluated":
        return Verdict("not evaluated", "no seed has a value for both (metric undefined or "
                       "seeds not shared)", paired)
    who = f"{claim.method} vs {claim.rival}"
    if paired.status == "indicative":
        better = ("better" if paired.mean_diff > 0 else "worse" if paired.mean_diff < 0
                  else "equal")
        return Verdict("indicative", f"{who}: {paired.summary()}, one seed: {better}", paired)
    return Verdict(paired.status, f"{who}: {paired.summary()}", paired)


def _protocol_missing(res: Results, protocol: str | None) -> str | None:
    if protocol is None:
        return None if "clean_accuracy" in res else "no clean accuracy"
    r = res.get(protocol)
    if not isinstance(r, Mapping):
        return f"no {protocol} results"
    if "skipped" in r:
        return f"{protocol} skipped ({r['skipped']})"
    return None


def _mean(xs) -> float | None:
    xs = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    return sum(xs) / len(xs) if xs else None


# --------------------------------------------------------------------------- metrics
def _full_subset(r: Mapping) -> str:
    return max(r["subsets"], key=lambda s: s.count("+"))


def _missing_subsets_mean(r: Mapping, without: str | None) -> float | None:
    full = _full_subset(r)
    keep = [(s, a) for s, a in zip(r["subsets"], r["accuracy"]) if s != full]
    if without is not None:
        keep = [(s, a) for s, a in keep if without not in s.split("+")]
    return _mean(a for _, a in keep)


def missing_metrics(without: str | None = None, drop: bool = True) -> tuple[Metric, ...]:
    """Mean accuracy over the subsets missing a modality (``without``: only those missing
    that modality) and, with ``drop``, its drop from the all-modality subset's accuracy."""
    which = f"subsets without {without}" if without else "subsets missing a modality"

    def absolute(res):
        return _missing_subsets_mean(res["missing_subsets"], without)

    def fall(res):
        r = res["missing_subsets"]
        miss = _missing_subsets_mean(r, without)
        full = r["accuracy"][r["subsets"].index(_full_subset(r))]
        return None if miss is None or full is None else full - miss

    out = [Metric(f"mean accuracy over {which}", "missing_subsets", absolute)]
    if drop:
        out.append(Metric(f"drop from all modalities to {which} (smaller is better)",
                          "missing_subsets", fall, higher_is_better=False))
    return tuple(out)


def missing_rate_metric() -> Metric:
    """Mean accuracy over modalities x missing rates."""
    def area(res):
        return _mean(a for curve in res["missing_rate"]["accuracy"].values() for a in curve)
    return Metric("mean accuracy over modalities x missing rates", "missing_rate", area)


def noise_metrics(kind: str = "gaussian") -> tuple[Metric, ...]:
    """Mean accuracy under ``kind`` noise (every corrupted modality and level > 0) and its mean
    drop from the same curve's level-0 accuracy."""
    key = "sigmas" if kind == "gaussian" else "densities"

    def pairs(res):
        r = res["noise"][kind]
        for curve in r["accuracy"].values():
            clean = next((a for lvl, a in zip(r[key], curve) if lvl == 0), None)
            for lvl, a in zip(r[key], curve):
                if lvl > 0:
                    yield clean, a

    def absolute(res):
        return _mean(a for _, a in pairs(res))

    def fall(res):
        return _mean(None if c is None else c - a for c, a in pairs(res))

    what = f"{kind} noise, every corrupted modality and level > 0"
    return (Metric(f"mean accuracy under {what}", "noise", absolute),
            Metric(f"mean drop from clean under {what} (smaller is better)", "noise", fall,
                   higher_is_better=False))


def _attacked(res, kind: str, budget: str) -> list[tuple[float, float]]:
    r = res["attack"]
    curve = r[kind]["accuracy"].get(budget)
    if curve is None:
        return []
    return [(r["clean_accuracy"], a) for e, a in zip(r["eps"], curve) if e > 0]


def attack_metrics(kind: str, budget: str = "joint") -> tuple[Metric, ...]:
    """Mean ``kind`` (fgm / pgd) accuracy over eps > 0 under ``budget`` and its drop from the
    attacked rows' clean accuracy."""
    def absolute(res):
        return _mean(a for _, a in _attacked(res, kind, budget))

    def fall(res):
        return _mean(c - a for c, a in _attacked(res, kind, budget))

    what = f"{kind.upper()}, {budget} l2 budget, eps > 0"
    return (Metric(f"mean accuracy under {what}", "attack", absolute),
            Metric(f"mean drop from clean under {what} (smaller is better)", "attack", fall,
                   higher_is_better=False))


def clean_metric() -> Metric:
    return Metric("clean accuracy, all modalities", None, lambda res: res.get("clean_accuracy"))


def preferred_modality(res: Results) -> str | None:
    """The modality a run relies on most: the one whose accuracy alone is highest
    (missing-modality protocol); None without that protocol."""
    r = res.get("missing_subsets")
    if not isinstance(r, Mapping) or "subsets" not in r:
        return None
    single = [(a, s) for s, a in zip(r["subsets"], r["accuracy"]) if "+" not in s
              and a is not None]
    return max(single)[1] if single else None


def uni_modal_attack_drop(res: Results, kind: str = "pgd", preferred: bool = True
                          ) -> float | None:
    """Mean drop from clean under a ``kind`` attack on one modality alone: the run's preferred
    modality (``preferred``) or, else, the most damaging of the others."""
    pref = preferred_modality(res)
    if pref is None or not isinstance(res.get("attack"), Mapping):
        return None
    if preferred:
        return _mean(c - a for c, a in _attacked(res, kind, pref))
    others = [b for b in res["attack"]["budgets"] if b not in ("joint", pref)]
    drops = [_mean(c - a for c, a in _attacked(res, kind, b)) for b in others]
    drops = [d for d in drops if d is not None]
    return max(drops) if drops else None


def preference_metric(kind: str = "pgd") -> Metric:
    """Within one method: drop under an attack on the preferred modality vs on the most
    damaging other modality (the method side reads the first, the rival side the second)."""
    return Metric(f"mean {kind.upper()} drop, attack on the preferred modality (the best "
                  "alone) vs on the most damaging other one", "attack",
                  lambda res: uni_modal_attack_drop(res, kind, True),
                  rival_value=lambda res: uni_modal_attack_drop(res, kind, False))


def certified_metrics(runs: Runs, method: str) -> list[Metric]:
    """One metric per radius > 0: certified accuracy (rival rule ``min``) with the first
    Lipschitz estimator of the method's first run that is sound (else the first)."""
    first = next((r.get("certify") for r in runs.get(method, {}).values()), None)
    if not isinstance(first, Mapping) or "estimators" not in first:
        return [Metric("certified accuracy", "certify", lambda res: None)]
    ests = first["estimators"]
    est = next((e for e, v in ests.items() if v.get("kind") == "sound"), next(iter(ests)))
    kind = ests[est].get("kind", "?")
    out = []
    for i, radius in enumerate(first["radii"]):
        if radius <= 0:
            continue

        def value(res, i=i, radius=radius):
            c = res["certify"]
            e = c["estimators"].get(est)
            if e is None or i >= len(c["radii"]) or c["radii"][i] != radius:
                return None
            return e["min"]["certified_accuracy"][i]
        out.append(Metric(f"certified accuracy at radius {radius:g} ({est} Lipschitz, {kind}; "
                          "rival rule min)", "certify", value))
    return out


# --------------------------------------------------------------------------- the claims
_M = "shared/METHODS.md"
_NO_TABLE = "the paper's section/table: UNVERIFIED (full text not read)"

CLAIMS: list[Claim] = []


def register_claim(claim: Claim) -> Claim:
    """Append ``claim`` to :data:`CLAIMS` (the report checks every registered claim)."""
    CLAIMS.append(claim)
    return claim


def _add(*args, **kwargs) -> None:
    register_claim(Claim(*args, **kwargs))


# UME-MMA
_add("UME-MMA", "Missing-modality augmentation (UME-MMA) beats the same uni-modal ensemble "
     "without it (UME) when a modality is missing", "ume_mma", "ume", missing_metrics(),
     f"{_M} section 1 (Idea, Training); {_NO_TABLE}", "UNVERIFIED")
_add("UME-MMA", "UME-MMA beats UME across missing rates", "ume_mma", "ume",
     (missing_rate_metric(),),
     f"{_M} section 1 (Eval protocol: missing rates); {_NO_TABLE}", "UNVERIFIED")
_add("UME-MMA", "UME-MMA beats joint training when a modality is missing", "ume_mma", "joint",
     missing_metrics(), f"{_M} section 1; {_NO_TABLE}", "UNVERIFIED", matched=False)
_add("UME-MMA", "UME-MMA beats joint training across missing rates", "ume_mma", "joint",
     (missing_rate_metric(),), f"{_M} section 1; {_NO_TABLE}", "UNVERIFIED", matched=False)
_add("UME-MMA", "UME-MMA beats plain late fusion when a modality is missing", "ume_mma", "late",
     missing_metrics(), f"{_M} section 1; {_NO_TABLE}", "UNVERIFIED", matched=False)

# CRMT
_CRMT = f"{_M} section 2 (Headline numbers: 'CRMT-JT/AT/Mix improve both clean and attacked " \
        f"accuracy over JT and over robust baselines'); {_NO_TABLE}"
_add("CRMT", "CRMT raises certified accuracy over joint training, at every radius", "crmt",
     "joint", certified_metrics, f"{_M} section 2 (certified bound, step 2); {_NO_TABLE}",
     "UNVERIFIED")
_add("CRMT", "CRMT raises PGD-l2 robustness over joint training", "crmt", "joint",
     attack_metrics("pgd"), _CRMT, "UNVERIFIED")
_add("CRMT", "CRMT raises FGM robustness over joint training", "crmt", "joint",
     attack_metrics("fgm"), _CRMT, "UNVERIFIED")
_add("CRMT", "CRMT improves clean accuracy over joint training", "crmt", "joint",
     (clean_metric(),), _CRMT, "UNVERIFIED")
_add("CRMT", "Modality preference: attacking the preferred modality alone hurts joint training "
     "more than attacking any other modality", "joint", "joint", (preference_metric(),),
     f"{_M} section 2 (integration factor; 'attacks on the preferred modality (audio on KS) "
     f"are the most damaging'); {_NO_TABLE}", "UNVERIFIED")
_add("CRMT", "CRMT reduces the damage of an attack on the preferred modality alone", "crmt",
     "joint", (Metric("mean PGD drop from clean, attack on the run's preferred modality alone "
                      "(smaller is better)", "attack", uni_modal_attack_drop,
                      higher_is_better=False),),
     f"{_M} section 2 (integration factor, uni-modal attacks); {_NO_TABLE}", "UNVERIFIED")
_add("CRMT", "CRMT-AT beats plain adversarial training (the same attack) under PGD", "crmt_at",
     "joint_at", attack_metrics("pgd"), _CRMT, "UNVERIFIED")
_add("CRMT", "CRMT-AT keeps clean accuracy over plain adversarial training", "crmt_at",
     "joint_at", (clean_metric(),), _CRMT, "UNVERIFIED")
_add("CRMT", "CRMT-Mix beats plain Mixup (the same pairs) under PGD", "crmt_mix", "joint_mix",
     attack_metrics("pgd"), _CRMT, "UNVERIFIED")
_add("CRMT", "CRMT-Mix keeps clean accuracy over plain Mixup", "crmt_mix", "joint_mix",
     (clean_metric(),), _CRMT, "UNVERIFIED")

# UDML
_UDML = (f"{_M} section 4 (Eval protocol: Gaussian / salt noise on 50 % of the test samples; "
         "the repository notes cite Table 3 of the paper)")
_UDML_EFFECT = ("paper: UNVERIFIED; repository notes, CREMA-D, UDML alone: clean 72.7, "
                "Gaussian-5 68.3, Gaussian-10 65.2 (no static-weight rival)")
_add("UDML", "Noise-aware, bias-corrected dynamic weights (UDML) are more robust to Gaussian "
     "noise than the same model with static weights", "udml", "udml_static",
     noise_metrics("gaussian"), _UDML, _UDML_EFFECT)
_add("UDML", "UDML is more robust to salt-and-pepper noise than the same model with static "
     "weights", "udml", "udml_static",
     noise_metrics("salt_pepper"), _UDML, _UDML_EFFECT)
_add("UDML", "UDML is more robust to Gaussian noise than plain late fusion", "udml", "late",
     noise_metrics("gaussian"), _UDML, _UDML_EFFECT, matched=False)

# DMRNet / MMANet
_DMR_EFFECT = ("official cramed_result.txt (CREMA-D; column order UNVERIFIED): DMRNet "
               "58.87/55.10/70.10, MMANet 59/44/65; no joint-with-dropout number")
_add("DMRNet", "DMRNet beats joint training with the same modality dropout when a modality is "
     "missing", "dmrnet", "joint_dropout", missing_metrics(),
     f"{_M} section 5 (Idea, Eval protocol); {_NO_TABLE}", _DMR_EFFECT)
_add("DMRNet", "DMRNet beats joint training when a modality is missing", "dmrnet", "joint",
     missing_metrics(drop=False), f"{_M} section 5; {_NO_TABLE}", _DMR_EFFECT, matched=False)
_add("MMANet", "MMANet's student beats joint training with the same modality dropout when a "
     "modality is missing", "mmanet", "joint_dropout", missing_metrics(),
     f"{_M} section 6 (Setting, MAD, MAR); {_NO_TABLE}", _DMR_EFFECT)
_add("MMANet", "MMANet's student beats joint training when a modality is missing", "mmanet",
     "joint", missing_metrics(drop=False), f"{_M} section 6; {_NO_TABLE}", _DMR_EFFECT,
     matched=False)

# One-stage distillation (the rival never sees video, so its drop is zero by construction:
# only the accuracy without the privileged modality is compared)
_add("One-stage distillation", "Distilling the privileged modality (video) beats joint "
     "training on the available modalities only, when video is missing", "distill",
     "joint_available", missing_metrics("video", drop=False),
     f"{_M} section 7 (Setting); {_NO_TABLE}", "UNVERIFIED")
_add("One-stage distillation", "Distilling video beats joint training when video is missing",
     "distill", "joint", missing_metrics("video", drop=False), f"{_M} section 7; {_NO_TABLE}",
     "UNVERIFIED", matched=False)

# TRML
_add("TRML", "Generating the missing modality (TRML) beats the same model with the virtual "
     "modality switched off when a modality is missing", "trml", "trml_novirtual",
     missing_metrics(), f"{_M} section 3 (Modules); {_NO_TABLE}", "UNVERIFIED")
_add("TRML", "TRML beats late fusion when a modality is missing", "trml", "late",
     missing_metrics(), f"{_M} section 3; {_NO_TABLE}", "UNVERIFIED", matched=False)



def claim_methods(claims: Sequence[Claim] | None = None) -> list[str]:
    """Every method the claims read (method and rival), in order of first use."""
    claims = CLAIMS if claims is None else claims
    return list(dict.fromkeys(m for c in claims for m in (c.method, c.rival)))


# Smoothing vs Lipschitz certificates (issue 15), kept in their own module.
from mmfast.eval.certificate_claims import certificate_claims  # noqa: E402

CLAIMS.extend(certificate_claims())
