"""l2 adversarial attacks on multi-modal models (CRMT's rob_test.py semantics, with fixes).

Both attacks perturb a dict of per-modality inputs to raise the cross entropy of the fused
logits. The gradient is normalised *jointly* across the attacked modalities (one l2 norm over
their concatenation), so the budget ``eps`` is a joint l2 radius, as in CRMT's multi-modal
attack. ``per_modality_eps`` gives each modality its own budget (CRMT's uni-modal attack):
each modality's gradient is then normalised on its own and its perturbation is projected
onto its own ball (rob_test.py projects onto the joint ball of radius ||eps||_2 only; the
per-modality projection is stricter and guarantees ||delta_m|| <= eps_m for every m).

Fixes over the official code: a zero gradient gives a zero step instead of NaN; parameter
gradients are never touched (``torch.autograd.grad`` on the inputs only), so the attacks can
run inside a training step (CRMT-AT); modalities absent from a row are never perturbed; the
model's train/eval mode is left as the caller set it.

``keep_best=True`` returns, per sample, the iterate (the clean input included) with the
smallest classification margin, so attacked accuracy can never exceed clean accuracy; the
evaluation protocols use it. Training (CRMT-AT) uses the last iterate (``keep_best=False``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmfast.nn.model import MODALITIES

__all__ = ["fgm", "pgd_l2", "classification_margin", "perturbation_norms"]

#: A valid input range: one (low, high) for every attacked modality, or one per modality name.
ClampSpec = tuple[float, float] | Mapping[str, tuple[float, float]] | None

_TINY = 1e-12


def classification_margin(logits: Tensor, target: Tensor) -> Tensor:
    """logit_y - max_{k != y} logit_k per row (negative means misclassified), float32."""
    z = logits.float()
    if z.shape[1] == 1:
        return torch.full_like(z[:, 0], math.inf)
    zy = z.gather(1, target.view(-1, 1)).squeeze(1)
    others = z.scatter(1, target.view(-1, 1), -math.inf)
    return zy - others.amax(dim=1)


def perturbation_norms(
    adv: Mapping[str, Tensor], clean: Mapping[str, Tensor], modalities: Sequence[str]
) -> tuple[Tensor, dict[str, Tensor]]:
    """(joint l2 norm (B,), {modality: l2 norm (B,)}) of adv - clean over ``modalities``."""
    per = {
        m: (adv[m].float() - clean[m].float()).flatten(1).norm(dim=1) for m in modalities
    }
    joint = torch.stack(list(per.values()), dim=0).pow(2).sum(0).sqrt()
    return joint, per


def fgm(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    mask: Tensor,
    target: Tensor,
    eps: float | None,
    modalities: Sequence[str] | None = None,
    per_modality_eps: Mapping[str, float] | None = None,
    clamp: ClampSpec = None,
    keep_best: bool = False,
) -> dict[str, Tensor]:
    """Fast gradient method: one step of l2 size ``eps`` along the normalised CE gradient.

    Returns a new dict (detached tensors) with every input; unattacked modalities are the
    caller's tensors unchanged.
    """
    return pgd_l2(
        model, inputs, mask, target, eps, steps=1, step_size=eps, modalities=modalities,
        per_modality_eps=per_modality_eps, clamp=clamp, keep_best=keep_best,
        _step_fraction=1.0,
    )


def pgd_l2(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    mask: Tensor,
    target: Tensor,
    eps: float | None,
    steps: int = 4,
    step_size: float | None = None,
    modalities: Sequence[str] | None = None,
    per_modality_eps: Mapping[str, float] | None = None,
    clamp: ClampSpec = None,
    projection: str = "l2",
    box_radius: float | None = None,
    keep_best: bool = False,
    _step_fraction: float | None = None,
) -> dict[str, Tensor]:
    """Projected gradient descent in l2: ``steps`` normalised steps of ``step_size``.

    eps: joint l2 budget (None allowed when ``per_modality_eps`` is given: then ||eps_m||_2).
    step_size: default eps / 3 (CRMT); with per-modality budgets each modality steps
        eps_m * step_size / eps.
    projection: "l2" projects the total perturbation onto the joint ball of radius eps (and
        each modality onto its own ball when budgets are per modality); "box" clamps every
        element of the perturbation to +-box_radius (CRMT-AT's training attack: 5 steps of
        eps/5 with box_radius 2 eps).
    clamp: valid input range applied after every step (e.g. (0, 1) for pixels).
    """
    names = _attacked_modalities(model, inputs, modalities, per_modality_eps)
    budgets, joint_eps = _budgets(names, eps, per_modality_eps)
    _check_args(steps, step_size, projection, box_radius, joint_eps)
    fraction = _step_fraction
    if fraction is None:
        fraction = 1.0 / 3.0 if step_size is None else step_size / joint_eps
    present = _presence(model, names, mask, inputs[names[0]].shape[0])
    bounds = {m: _bounds_for(clamp, m) for m in names}

    clean = {m: inputs[m].detach() for m in names}
    adv = dict(clean)
    best = dict(clean) if keep_best else None
    best_margin = None
    for _ in range(steps):
        grads, margin = _input_gradients(model, inputs, adv, mask, target, names)
        if keep_best:
            best_margin = _update_best(best, best_margin, adv, margin, names)
        directions = _normalised_directions(grads, present, names, per_modality_eps is not None)
        for m in names:
            stepped = adv[m] + (fraction * budgets[m]) * directions[m].to(adv[m].dtype)
            adv[m] = stepped
        adv = _project(adv, clean, names, budgets, joint_eps, projection, box_radius,
                       per_modality_eps is not None)
        adv = {m: _clamp(adv[m], bounds[m]) for m in names}
    if keep_best:
        with torch.no_grad():
            margin = classification_margin(_logits(model, inputs, adv, mask), target)
        _update_best(best, best_margin, adv, margin, names)
        adv = best
    out = dict(inputs)
    out.update({m: adv[m].detach() for m in names})
    return out


# ----------------------------------------------------------------------------- helpers
def _attacked_modalities(model, inputs, modalities, per_modality_eps) -> list[str]:
    if per_modality_eps is not None:
        unknown = sorted(set(per_modality_eps) - set(inputs))
        if unknown:
            raise ValueError(f"per_modality_eps: modalities {unknown} are not in inputs "
                             f"{sorted(inputs)}")
        names = [m for m in per_modality_eps if per_modality_eps[m] > 0]
        if modalities is not None:
            names = [m for m in names if m in modalities]
    elif modalities is not None:
        names = list(modalities)
    else:
        names = [m for m in _model_modalities(model) if m in inputs]
    missing = [m for m in names if m not in inputs]
    if missing:
        raise ValueError(f"modalities: expected names among {sorted(inputs)}, got {missing}")
    if not names:
        raise ValueError("modalities: expected at least one modality to attack, got none")
    return names


def _model_modalities(model) -> tuple[str, ...]:
    return tuple(getattr(model, "modalities", MODALITIES))


def _budgets(names, eps, per_modality_eps) -> tuple[dict[str, float], float]:
    if per_modality_eps is None:
        if eps is None or eps < 0:
            raise ValueError(f"eps: expected a non-negative float, got {eps!r}")
        return {m: float(eps) for m in names}, float(eps)
    bad = {m: e for m, e in per_modality_eps.items() if e < 0}
    if bad:
        raise ValueError(f"per_modality_eps: expected non-negative budgets, got {bad}")
    budgets = {m: float(per_modality_eps[m]) for m in names}
    joint = math.sqrt(sum(e * e for e in budgets.values()))
    if eps is not None:
        joint = min(joint, float(eps))
    return budgets, joint


def _check_args(steps, step_size, projection, box_radius, joint_eps) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected an int >= 1, got {steps!r}")
    if projection not in ("l2", "box"):
        raise ValueError(f"projection: expected 'l2' or 'box', got {projection!r}")
    if projection == "box" and (box_radius is None or box_radius < 0):
        raise ValueError(f"box_radius: expected a non-negative float with projection='box', "
                         f"got {box_radius!r}")
    if step_size is not None and step_size < 0:
        raise ValueError(f"step_size: expected a non-negative float, got {step_size!r}")
    if step_size is not None and joint_eps == 0 and step_size > 0:
        raise ValueError("step_size: must be 0 when the budget eps is 0")


def _presence(model, names, mask: Tensor, batch: int) -> dict[str, Tensor]:
    """(B,) bool per attacked modality: rows where it is present (absent rows stay clean)."""
    order = _model_modalities(model)
    if mask.dim() != 2 or mask.shape[0] != batch or mask.shape[1] != len(order):
        raise ValueError(f"mask: expected shape ({batch}, {len(order)}), got {tuple(mask.shape)}")
    return {m: mask[:, order.index(m)].bool() if m in order else mask.new_ones(batch).bool()
            for m in names}


def _bounds_for(clamp: ClampSpec, name: str) -> tuple[float, float] | None:
    if clamp is None:
        return None
    if isinstance(clamp, Mapping):
        return clamp.get(name)
    if len(clamp) != 2 or clamp[0] > clamp[1]:
        raise ValueError(f"clamp: expected (low, high) with low <= high, got {clamp!r}")
    return float(clamp[0]), float(clamp[1])


def _clamp(x: Tensor, bounds) -> Tensor:
    return x if bounds is None else x.clamp(bounds[0], bounds[1])


def _logits(model, inputs, adv, mask) -> Tensor:
    full = dict(inputs)
    full.update(adv)
    return model(full, mask).logits


def _input_gradients(model, inputs, adv, mask, target, names):
    """d CE(sum) / d x_m for the attacked modalities, and the current margin (no graph kept)."""
    leaves = {m: adv[m].detach().requires_grad_(True) for m in names}
    with torch.enable_grad():
        logits = _logits(model, inputs, leaves, mask)
        loss = F.cross_entropy(logits.float(), target, reduction="sum")
        grads = torch.autograd.grad(loss, [leaves[m] for m in names], allow_unused=True)
    out = {m: torch.zeros_like(leaves[m]) if g is None else g for m, g in zip(names, grads)}
    return out, classification_margin(logits.detach(), target)


def _normalised_directions(grads, present, names, separately: bool) -> dict[str, Tensor]:
    """Unit l2 directions: jointly across modalities, or per modality when ``separately``."""
    flat = {m: grads[m].float().flatten(1) * present[m].float()[:, None] for m in names}
    sq = {m: flat[m].pow(2).sum(1) for m in names}
    if not separately:
        joint = torch.stack([sq[m] for m in names]).sum(0).sqrt()
    directions = {}
    for m in names:
        norm = sq[m].sqrt() if separately else joint
        scale = torch.where(norm > _TINY, 1.0 / norm.clamp_min(_TINY), torch.zeros_like(norm))
        directions[m] = (flat[m] * scale[:, None]).view_as(grads[m])
    return directions


def _project(adv, clean, names, budgets, joint_eps, projection, box_radius, separately):
    delta = {m: adv[m].float() - clean[m].float() for m in names}
    if projection == "box":
        delta = {m: d.clamp(-box_radius, box_radius) for m, d in delta.items()}
    else:
        if separately:
            delta = {m: _scale_into_ball(d, d.flatten(1).norm(dim=1), budgets[m])
                     for m, d in delta.items()}
        joint = torch.stack([d.flatten(1).pow(2).sum(1) for d in delta.values()]).sum(0).sqrt()
        delta = {m: _scale_into_ball(d, joint, joint_eps) for m, d in delta.items()}
    return {m: (clean[m].float() + delta[m]).to(clean[m].dtype) for m in names}


def _scale_into_ball(delta: Tensor, norm: Tensor, radius: float) -> Tensor:
    factor = torch.where(norm > radius, radius / norm.clamp_min(_TINY), torch.ones_like(norm))
    return delta * factor.view(-1, *([1] * (delta.dim() - 1)))


def _update_best(best, best_margin, adv, margin, names):
    """Keep, per row, the iterate with the smallest margin seen so far."""
    if best_margin is None:
        for m in names:
            best[m] = adv[m].detach()
        return margin
    better = margin < best_margin
    for m in names:
        rows = better.view(-1, *([1] * (adv[m].dim() - 1)))
        best[m] = torch.where(rows, adv[m].detach(), best[m])
    return torch.minimum(margin, best_margin)
