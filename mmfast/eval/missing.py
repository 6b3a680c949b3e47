"""Missing-modality protocols: (a) every non-empty subset, (b) missing rate per modality."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from mmfast import ops
from mmfast.eval.common import (
    EvalConfig,
    accuracy,
    batches,
    drop_modalities,
    model_modalities,
    predict,
    register_protocol,
    split_inputs,
    subset_name,
    to_device,
)

__all__ = ["missing_subsets", "missing_rate"]


@register_protocol("missing_subsets")
def missing_subsets(model: nn.Module, data: Mapping[str, Tensor], cfg: EvalConfig) -> dict:
    """Accuracy on every non-empty modality subset (the data's own mask still applies).

    Models that return ``modality_logits`` are scored from one encoder pass through
    ``mmfast.ops.subset_accuracy``, provided those logits reproduce the model's own
    predictions on the full set; otherwise (joint models) each subset masks the inputs.
    """
    names = model_modalities(model)
    inputs, mask, label = split_inputs(model, data)
    subsets = ops.all_subsets(len(names))
    result = {"subsets": [subset_name(s, names) for s in subsets]}
    scores, reason = _modality_logits_if_faithful(model, inputs, mask, cfg)
    if scores is not None:
        acc = ops.subset_accuracy(scores, label, subsets, present=mask, backend=cfg.backend)
        result.update(path="modality_logits", accuracy=acc.tolist())
    else:
        acc = [accuracy(predict(model, inputs, mask & s, cfg), label) for s in subsets]
        result.update(path="masked_inputs", accuracy=acc, path_reason=reason)
    result["mean"] = float(torch.tensor(result["accuracy"]).mean())
    return result


@torch.no_grad()
def _modality_logits_if_faithful(model, inputs, mask, cfg) -> tuple[Tensor | None, str]:
    """(z (N, M, C), "") when averaging the model's modality logits over a subset gives the
    model's own prediction with that subset masked; else (None, why not).

    Checked on every row with the full set and on the first batch for every subset (a shared
    fused bias, as in CRMT's sum fusion, breaks the equivalence on small subsets).
    """
    names = model_modalities(model)
    zs, preds = [], []
    for rows in batches(mask.shape[0], cfg.batch_size):
        m = mask[rows].to(cfg.device)
        out = model(drop_modalities(to_device(inputs, rows, cfg.device), m, names), m)
        if out.modality_logits is None:
            return None, "the model returns no modality_logits (joint fusion)"
        zs.append(out.modality_logits.float().cpu())
        preds.append(out.logits.argmax(1).cpu())
    if not zs:
        return None, "empty split"
    z, pred = torch.cat(zs), torch.cat(preds)
    full = torch.ones(1, len(names), dtype=torch.bool)
    fused = ops.subset_logits(z, full, present=mask, backend=cfg.backend)[0]
    differ = int((fused.argmax(1) != pred).sum())
    if differ:
        return None, (f"averaging the modality_logits disagrees with the model's prediction "
                      f"on {differ} of {pred.numel()} rows, so subsets mask the inputs")
    probe = slice(0, min(cfg.batch_size, mask.shape[0]))
    subsets = ops.all_subsets(len(names))
    fast = ops.subset_logits(z[probe], subsets, present=mask[probe], backend=cfg.backend)
    slow = torch.stack([predict(model, {k: x[probe] for k, x in inputs.items()},
                                mask[probe] & s, cfg) for s in subsets])
    differ = int((fast.argmax(-1) != slow).sum())
    if differ:
        return None, (f"averaging the modality_logits over a subset disagrees with masking "
                      f"the inputs on {differ} (row, subset) pairs, so subsets mask the inputs")
    return z, ""


@register_protocol("missing_rate")
def missing_rate(model: nn.Module, data: Mapping[str, Tensor], cfg: EvalConfig) -> dict:
    """Accuracy when a seeded random fraction r of the samples lose modality m, per m.

    Exactly round(r N) rows lose m, the first of one seeded permutation per modality, so the
    dropped sets are nested across rates; r = 0 is the clean accuracy and r = 1 the accuracy
    of the subset without m. Rows are independent in eval mode, so each row's prediction is
    taken from the clean pass or the pass without m (M + 1 passes in all).
    """
    names = model_modalities(model)
    inputs, mask, label = split_inputs(model, data)
    n = label.shape[0]
    clean_ok = predict(model, inputs, mask, cfg) == label
    curves = {}
    for j, m in enumerate(names):
        without = mask.clone()
        without[:, j] = False
        dropped_ok = predict(model, inputs, without, cfg) == label
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + 7919 * j))
        curve = []
        for rate in cfg.missing_rates:
            lose = torch.zeros(n, dtype=torch.bool)
            lose[order[: round(rate * n)]] = True
            curve.append(float(torch.where(lose, dropped_ok, clean_ok).float().mean()))
        curves[m] = curve
    return {"rates": list(cfg.missing_rates), "accuracy": curves,
            "clean_accuracy": float(clean_ok.float().mean())}
