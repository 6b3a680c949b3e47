"""Certification protocol (e): certified radius distribution and certified accuracy.

For a :class:`~mmfast.nn.model.CertifiableModel` (h = sum_m z^(m) + b) the radius of a
sample is ``mmfast.ops.certified_margin`` with target = the label, for every Lipschitz table
the model offers. A table is *sound* only if it upper-bounds the true Lipschitz constants
(e.g. a product of per-layer spectral norms); CRMT's gradient-norm estimate is *empirical*
and its radii are not guarantees. The valid rival rule ("min" over every other class) is the
one reported; CRMT's "top" rule (the fused runner-up only, which can overstate the radius) is
reported beside it for comparison.

Each estimator's entry records its ``bound``: how the table pairs classes, exactly
(L(phi) ||a_y W_y - a_k W_k||, the sound tables of joint training and CRMT alike) or by the
triangle inequality (|a_y| tau_y + |a_k| tau_k, the paper's empirical estimate), read from
the model's ``lipschitz_bounds`` ("unspecified" for a model that does not say).

A soundness check attacks the same rows with PGD: a misclassified adversarial example closer
than the certified radius is a *violation*; a sound table must have none.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from mmfast import ops
from mmfast.eval.adversarial import attack_subset, attacked_batches
from mmfast.eval.attacks import perturbation_norms
from mmfast.eval.common import (
    EvalConfig,
    batches,
    drop_modalities,
    model_modalities,
    register_protocol,
    split_inputs,
    to_device,
)
from mmfast.nn.model import CertifiableModel

__all__ = ["certify", "lipschitz_kind", "bound_description", "SOUND_ESTIMATORS"]

#: Lipschitz estimator names that are upper bounds (certificates); others are estimates.
SOUND_ESTIMATORS = ("spectral", "sound")

RIVAL_RULES = {
    "min": "minimum over every rival class k != y (a valid certificate)",
    "top": "CRMT's rule: only the fused runner-up class (can overstate the radius)",
}

_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def bound_description(pairing: str | None) -> dict:
    """{"pairing": "exact_pairwise" | "triangle" | "unspecified", "formula": ...}: how a
    table's lip[m, y, k] pairs the classes y, k (the report says which bound a curve uses)."""
    from mmfast.methods.lipschitz import BOUNDS

    if pairing not in BOUNDS:
        return {"pairing": "unspecified",
                "formula": "the model does not say how its table pairs classes"}
    return {"pairing": pairing, "formula": BOUNDS[pairing]}


def lipschitz_kind(name: str) -> str:
    """"sound" for an upper bound, "empirical" for an estimate (CRMT's gradient norms)."""
    return "sound" if name in SOUND_ESTIMATORS else "empirical"


@torch.no_grad()
def certify_scores_all(model, inputs, mask, cfg) -> tuple[Tensor, Tensor | None]:
    """z (N, M, C) float32 on CPU and the bias, batch by batch."""
    names = model_modalities(model)
    zs, bias = [], None
    for rows in batches(mask.shape[0], cfg.batch_size):
        m = mask[rows].to(cfg.device)
        z, bias = model.certify_scores(drop_modalities(to_device(inputs, rows, cfg.device),
                                                       m, names), m)
        zs.append(z.float().cpu())
    bias = None if bias is None else bias.detach().float().cpu()
    return torch.cat(zs), bias


@register_protocol("certify")
def certify(model: nn.Module, data: Mapping[str, Tensor], cfg: EvalConfig) -> dict:
    """Certified accuracy at ``cfg.certify_radii`` and the radius distribution, per estimator."""
    if not isinstance(model, CertifiableModel):
        return {"skipped": "the model is not a CertifiableModel (no certify_scores/lipschitz)"}
    tables = {k: v for k, v in (model.lipschitz or {}).items() if v is not None}
    if not tables:
        return {"skipped": "the model offers no Lipschitz table"}
    inputs, mask, label = split_inputs(model, data)
    z, bias = certify_scores_all(model, inputs, mask, cfg)
    distance = _pgd_distances(model, inputs, mask, label, cfg)
    result = {"radii": list(cfg.certify_radii), "rival_rules": RIVAL_RULES,
              "norm": "joint l2 over all modalities", "estimators": {}}
    pairing = getattr(model, "lipschitz_bounds", None) or {}
    for name, lip in tables.items():
        lip = lip.detach().float().cpu()
        entry = {"kind": lipschitz_kind(name), "bound": bound_description(pairing.get(name))}
        for rival in RIVAL_RULES:
            radius, _, _ = ops.certified_margin(z, label, lip, mask=mask, bias=bias,
                                                rival=rival, backend=cfg.backend)
            entry[rival] = {"certified_accuracy":
                            ops.certified_accuracy(radius, list(cfg.certify_radii)).tolist()}
            if rival == "min":
                entry["min"].update(_distribution(radius))
                entry["soundness_check"] = _violations(radius, distance)
        result["estimators"][name] = entry
    result["soundness_check"] = distance["summary"]
    return result


def _distribution(radius: Tensor) -> dict:
    """Quantiles and a histogram of the radius over correctly classified rows."""
    ok = radius[radius > 0]
    finite = ok[torch.isfinite(ok)]
    out = {"fraction_certified_positive": float((radius > 0).float().mean())}
    if finite.numel():
        q = torch.quantile(finite.double(), torch.tensor(_QUANTILES, dtype=torch.float64))
        counts, edges = torch.histogram(finite.double(), bins=20)
        out.update(quantiles=dict(zip([str(p) for p in _QUANTILES], q.tolist())),
                   mean=float(finite.mean()),
                   histogram={"counts": counts.long().tolist(), "edges": edges.tolist()})
    return out


def _pgd_distances(model, inputs, mask, label, cfg) -> dict:
    """Per attacked row: the smallest joint l2 distance to a misclassified PGD example found
    over the budgets ``cfg.certify_check_eps`` (default ``cfg.attack_eps``); inf if none."""
    budgets = cfg.certify_check_eps if cfg.certify_check_eps is not None else cfg.attack_eps
    budgets = [e for e in budgets if e > 0]
    rows = attack_subset(label.shape[0], cfg)
    distance = torch.full((rows.numel(),), float("inf"))
    names = model_modalities(model)
    sub = {m: x[rows] for m, x in inputs.items()}
    for eps in budgets:
        start = 0
        for x, adv, m, y in attacked_batches(model, sub, mask[rows], label[rows], cfg,
                                             "pgd", eps, "joint"):
            with torch.no_grad():
                wrong = (model(adv, m).logits.argmax(1) != y).cpu()
            joint, _ = perturbation_norms(adv, x, names)
            block = distance[start:start + y.numel()]
            block[wrong] = torch.minimum(block[wrong], joint.cpu()[wrong])
            start += y.numel()
    return {"rows": rows, "distance": distance,
            "summary": {"pgd_eps": budgets, "samples": int(rows.numel()),
                        "adversarial_found": int(torch.isfinite(distance).sum())}}


def _violations(radius: Tensor, distance: dict) -> dict:
    """Rows whose certified radius exceeds the distance to an actual adversarial example."""
    r = radius[distance["rows"]]
    d = distance["distance"]
    violated = (r > 0) & (d < r * (1 - 1e-5))
    return {"violations": int(violated.sum()), "checked": int(r.numel())}
