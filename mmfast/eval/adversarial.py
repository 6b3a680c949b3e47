"""Attack protocol (d): FGM and PGD-l2 accuracy vs budget, joint and uni-modal."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from mmfast.eval.attacks import fgm, pgd_l2
from mmfast.eval.common import (
    EvalConfig,
    batches,
    drop_modalities,
    model_modalities,
    register_protocol,
    split_inputs,
    to_device,
)

__all__ = ["attack", "attack_subset", "attacked_batches", "PIXEL_CLAMP", "default_clamp",
           "describe_clamp", "CLAMP_RULE"]

#: Valid input range of the loaders' pixel modalities (``mmfast.data``: video and image in
#: [0, 1]). Audio log-mel is not clamped, as in CRMT's rob_test.py. ``mmfast eval`` and
#: ``mmfast demo`` both attack with this clamp unless ``--eval-overrides`` sets ``clamp``.
PIXEL_CLAMP: dict[str, tuple[float, float]] = {"video": (0.0, 1.0), "image": (0.0, 1.0)}

#: How ``clamp`` is applied (recorded with the attack results and printed by the report).
CLAMP_RULE = ("after every attack step each modality with a valid range is clamped to it; "
              "modalities without one are not clamped")


def default_clamp() -> dict[str, tuple[float, float]]:
    """The clamp ``mmfast eval`` and ``mmfast demo`` use when none is given."""
    return dict(PIXEL_CLAMP)


def describe_clamp(clamp: Mapping[str, object] | None, modalities=()) -> str:
    """"video [0, 1], image [0, 1]; audio not clamped" (or "no clamping")."""
    if not clamp:
        return "no clamping (attacks may leave the valid input range)"
    parts = [f"{m} [{lo:g}, {hi:g}]" for m, (lo, hi) in clamp.items()]
    free = [m for m in modalities if m not in clamp]
    return ", ".join(parts) + (f"; {', '.join(free)} not clamped" if free else "")


def attack_subset(n: int, cfg: EvalConfig) -> Tensor:
    """Row indices attacked: all rows, or a seeded random subset of ``cfg.attack_samples``."""
    if cfg.attack_samples is None or cfg.attack_samples >= n:
        return torch.arange(n)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + 104729))
    return order[: cfg.attack_samples].sort().values


def attacked_batches(model, inputs, mask, label, cfg: EvalConfig, kind: str, eps: float,
                     budget: str):
    """Yield (clean batch, adversarial batch, mask, label) over the attacked rows.

    budget "joint" attacks every modality under one joint l2 budget; a modality name attacks
    that modality alone with l2 budget eps.
    """
    names = model_modalities(model)
    attack_fn = fgm if kind == "fgm" else pgd_l2
    extra = {} if kind == "fgm" else {"steps": cfg.attack_steps}
    for rows in batches(mask.shape[0], cfg.batch_size):
        m = mask[rows].to(cfg.device)
        y = label[rows].to(cfg.device)
        x = drop_modalities(to_device(inputs, rows, cfg.device), m, names)
        if budget == "joint":
            adv = attack_fn(model, x, m, y, eps, clamp=cfg.clamp, keep_best=True, **extra)
        else:
            adv = attack_fn(model, x, m, y, None, per_modality_eps={budget: eps},
                            clamp=cfg.clamp, keep_best=True, **extra)
        yield x, adv, m, y


@register_protocol("attack")
def attack(model: nn.Module, data: Mapping[str, Tensor], cfg: EvalConfig) -> dict:
    """Accuracy under FGM and PGD-l2 (``cfg.attack_steps`` steps of eps/3) for each budget.

    Per sample the attack keeps its lowest-margin iterate (the clean input included), so an
    attacked accuracy never exceeds the clean accuracy of the same rows.
    """
    names = model_modalities(model)
    inputs, mask, label = split_inputs(model, data)
    rows = attack_subset(label.shape[0], cfg)
    inputs = {m: x[rows] for m, x in inputs.items()}
    mask, label = mask[rows], label[rows]
    clean = _accuracy(model, ((x, x, m, y) for x, _, m, y in _clean_batches(
        model, inputs, mask, label, cfg)))
    budgets = ["joint", *names]
    result = {"eps": list(cfg.attack_eps), "num_samples": int(label.numel()),
              "clean_accuracy": clean, "budgets": budgets,
              "norm": "l2 in input space; joint = over all modalities together",
              "clamp": cfg.clamp, "clamp_rule": CLAMP_RULE,
              "pgd": {"steps": cfg.attack_steps, "step_size": "eps / 3"}}
    for kind in ("fgm", "pgd"):
        result[kind] = {**result.get(kind, {}), "accuracy": {
            b: [clean if eps == 0 else _accuracy(
                model, attacked_batches(model, inputs, mask, label, cfg, kind, eps, b))
                for eps in cfg.attack_eps]
            for b in budgets}}
    return result


def _clean_batches(model, inputs, mask, label, cfg):
    names = model_modalities(model)
    for rows in batches(mask.shape[0], cfg.batch_size):
        m = mask[rows].to(cfg.device)
        x = drop_modalities(to_device(inputs, rows, cfg.device), m, names)
        yield x, x, m, label[rows].to(cfg.device)


@torch.no_grad()
def _accuracy(model, stream) -> float:
    correct = total = 0
    for _, adv, m, y in stream:
        correct += int((model(adv, m).logits.argmax(1) == y).sum())
        total += y.numel()
    return correct / total if total else float("nan")
