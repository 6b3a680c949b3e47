"""Exact certificates against missing modalities (``mmfast eval --protocols
missing_certificate``).

A prediction is *certified against any k missing modalities* exactly when it is correct for
every pattern with at least M - k of the M modalities present (the data's own mask still
applies). All 2^M - 1 patterns are scored from one encoder pass with
``mmfast.ops.subset_logits`` when the model's modality logits reproduce its predictions
(late fusion, UME-MMA, CRMT, ...); otherwise (joint fusion) each pattern masks the inputs.
No sampling: certified accuracy for k = 0..M-1 is exact (k = 0 is the clean accuracy).

The same rule combines with smoothing (``mmfast.eval.smoothing``): with a per-pattern
certified radius, the radius against k missing modalities is the minimum over the patterns
with at least M - k present (:func:`combined_by_k`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from mmfast import ops
from mmfast.eval.common import (
    EvalConfig,
    model_modalities,
    predict,
    register_protocol,
    split_inputs,
    subset_name,
)
from mmfast.eval.missing import _modality_logits_if_faithful

__all__ = ["missing_certificate", "pattern_correct", "certified_by_k", "combined_by_k",
           "pattern_path", "lipschitz_same_rows", "GUARANTEE"]

GUARANTEE = "deterministic and exact: every pattern is evaluated, no sampling, no bound"


def combined_by_k(values: Tensor, subsets: Tensor) -> Tensor:
    """(M, N): for k = 0..M-1 the minimum of ``values`` (S, N) over the patterns with at
    least M - k modalities (``subsets`` (S, M) bool)."""
    M = subsets.shape[1]
    size = subsets.sum(1).to(values.device)
    rows = []
    for k in range(M):
        keep = size >= M - k
        if not bool(keep.any()):
            raise ValueError(f"combined_by_k: argument 'subsets' expected a pattern with at "
                             f"least {M - k} modalities, got none")
        rows.append(values[keep].min(dim=0).values)
    return torch.stack(rows)


def certified_by_k(correct: Tensor, subsets: Tensor) -> Tensor:
    """(M, N) bool: row certified against any k missing modalities, k = 0..M-1, from
    ``correct`` (S, N) bool per pattern."""
    return combined_by_k(correct.to(torch.int8), subsets).bool()


def pattern_path(model: nn.Module, inputs: Mapping[str, Tensor], mask: Tensor,
                 cfg: EvalConfig) -> tuple[Tensor | None, str]:
    """(all patterns (S, M), "") when the model's modality logits reproduce its predictions
    on every pattern (checked as ``missing_subsets`` does), else (None, why not)."""
    z, why = _modality_logits_if_faithful(model, inputs, mask, cfg)
    if z is None:
        return None, why
    return ops.all_subsets(len(model_modalities(model))), ""


def pattern_correct(model: nn.Module, inputs: Mapping[str, Tensor], mask: Tensor,
                    label: Tensor, cfg: EvalConfig) -> tuple[Tensor, Tensor, str]:
    """(correct (S, N) bool, subsets (S, M), path) for every non-empty pattern."""
    subsets = ops.all_subsets(len(model_modalities(model)))
    z, _ = _modality_logits_if_faithful(model, inputs, mask, cfg)
    if z is not None:
        scores = ops.subset_logits(z, subsets, present=mask, backend=cfg.backend)
        return scores.argmax(-1) == label[None], subsets, "modality_logits"
    preds = torch.stack([predict(model, inputs, mask & s, cfg) for s in subsets])
    return preds == label[None], subsets, "masked_inputs"


@register_protocol("missing_certificate")
def missing_certificate(model: nn.Module, data: Mapping[str, Tensor], cfg: EvalConfig) -> dict:
    """Exact certified accuracy against any k missing modalities, k = 0..M-1."""
    names = model_modalities(model)
    inputs, mask, label = split_inputs(model, data)
    correct, subsets, path = pattern_correct(model, inputs, mask, label, cfg)
    by_k = certified_by_k(correct, subsets)
    return {"guarantee": GUARANTEE, "path": path, "k": list(range(len(names))),
            "certified_accuracy": by_k.double().mean(dim=1).tolist(),
            "patterns": [subset_name(s, names) for s in subsets],
            "pattern_accuracy": correct.double().mean(dim=1).tolist()}


def lipschitz_same_rows(model: nn.Module, inputs: Mapping[str, Tensor], mask: Tensor,
                        label: Tensor, radii, cfg: EvalConfig) -> dict:
    """The model's Lipschitz certificate (``certified_margin``, rival rule min) on these rows
    at these radii, per Lipschitz table, to set beside a smoothing certificate."""
    from mmfast.eval.certify import certify_scores_all, lipschitz_kind
    from mmfast.nn.model import CertifiableModel

    if not isinstance(model, CertifiableModel):
        return {"skipped": "the model is not a CertifiableModel"}
    tables = {k: v for k, v in (model.lipschitz or {}).items() if v is not None}
    if not tables:
        return {"skipped": "the model offers no Lipschitz table"}
    z, bias = certify_scores_all(model, inputs, mask, cfg)
    out = {}
    for name, lip in tables.items():
        radius, _, _ = ops.certified_margin(z, label, lip.detach().float().cpu(), mask=mask,
                                            bias=bias, rival="min", backend=cfg.backend)
        out[name] = {"kind": lipschitz_kind(name),
                     "certified_accuracy": ops.certified_accuracy(radius, list(radii)).tolist()}
    return out
