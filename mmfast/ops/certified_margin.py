"""certified_margin: per-sample certified radius of a sum-of-modalities classifier (CRMT).

For h_k = sum_m z_bmk + b_k, a perturbation of norm < radius_b cannot change the prediction
away from target_b, given per-modality Lipschitz constants lip_m[y, k] of x^(m) -> z^(m)_y -
z^(m)_k: r_bk = margin_bk / ||(mask_bm lip_m[y, k])_m||_q, q the dual exponent of p.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mmfast.ops import _registry, _validate, reference
from mmfast.ops._dispatch import choose_backend
from mmfast.ops.reference import dual_exponent, opmath_dtype
from mmfast.ops.results import CertifiedMarginResult

__all__ = ["certified_margin", "certified_accuracy", "CertifiedMarginResult", "pair_lipschitz"]
OP = "certified_margin"
RIVALS = ("min", "top")


def certified_margin(
    z: Tensor,
    target: Tensor,
    lip: Tensor,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    p: float = 2.0,
    rival: str = "min",
    *,
    backend: str | None = None,
) -> CertifiedMarginResult:
    """Certified radius, margin and rival class of every sample.

    Args:
        z: (B, M, C) per-modality class scores (integration weights folded in).
        target: (B,) int64 label (certified accuracy) or prediction (certified robustness).
        lip: finite non-negative Lipschitz constants, one of
            (M,): of x^(m) -> z^(m)_y - z^(m)_k, the same for every class pair;
            (M, C): per class, tau_c^(m) bounding x^(m) -> z^(m)_c (CRMT's table; with the
            integration weights folded into z, tau_c^(m) = |a_c^(m)| times the unit
            logit's constant). A pair is bounded by tau_y^(m) + tau_k^(m) (triangle
            inequality): the table is expanded to (M, C, C) by :func:`pair_lipschitz`;
            (M, C, C): per class pair, lip_m[y, k] (exact pairwise bounds).
        mask: None (all present) or (B, M) bool. Absent modalities are never read.
        bias: None or (C,) bias of the fused head.
        p: norm of the perturbation (>= 1, or math.inf); the dual norm combines modalities.
        rival: "min" (minimum over every k != y: a valid certificate) or "top" (k = fused
            runner-up, as CRMT's training step 2; may overstate the radius).
        backend: "auto" (default, or $MMFAST_BACKEND), "cpp", "cuda", "triton", "reference".

    Returns:
        :class:`CertifiedMarginResult` ``(radius, margin, runner_up)``: radius (B,) (negative
        when misclassified; +-inf when no modality bounds the margin), margin (B,) at the
        rival, runner_up (B,) int64 rival class (-1 when C = 1). radius and margin are float32
        (float64 for float64 z) and differentiable w.r.t. z, lip and bias. A row with a
        non-finite score among its present modalities gets radius NaN, margin NaN and
        runner_up -1 (never a certificate).
    """
    _validate.floating(OP, "z", z, ("B", "M", "C"))
    B, M, C = z.shape
    _validate.modality_count(OP, "z", M)
    dev, acc = z.device, opmath_dtype(z.dtype)
    _validate.tensor(OP, "target", target, dims=(B,), dtypes=(torch.int64,), device=dev)
    _validate.floating(OP, "lip", lip, None, device=dev)
    if tuple(lip.shape) not in ((M,), (M, C), (M, C, C)):
        raise ValueError(f"{OP}: argument 'lip' expected shape ({M},), ({M}, {C}) or "
                         f"({M}, {C}, {C}), got {tuple(lip.shape)}")
    if mask is not None:
        _validate.boolean(OP, "mask", mask, (B, M), device=dev)
    if bias is not None:
        _validate.floating(OP, "bias", bias, (C,), device=dev)
    if not (isinstance(p, (int, float)) and p >= 1):
        raise ValueError(f"{OP}: argument 'p' expected a number >= 1 or math.inf, got {p!r}")
    if rival not in RIVALS:
        raise ValueError(f"{OP}: argument 'rival' expected one of {RIVALS}, got {rival!r}")
    name = choose_backend(OP, dev, backend, z.shape)
    if _validate.value_checks(name):
        _validate.index_range(OP, "target", target, C)
        _validate.finite_nonnegative(OP, "lip", lip)
    if lip.dim() == 2:
        lip = pair_lipschitz(lip)
    if name == "reference":
        return CertifiedMarginResult(
            *reference.certified_margin(z, target, lip, mask, bias, float(p), rival))
    return CertifiedMarginResult(*_registry.call(
        OP, name, z.contiguous(), target.contiguous(), lip.to(acc).contiguous(),
        None if mask is None else mask.contiguous(),
        None if bias is None else bias.to(acc).contiguous(), dual_exponent(float(p)),
        rival == "top",
    ))


def pair_lipschitz(tau: Tensor) -> Tensor:
    """(M, C) per-class constants -> (M, C, C) pair bounds tau[m, y] + tau[m, k]
    (differentiable): ||grad (z_y - z_k)|| <= ||grad z_y|| + ||grad z_k||."""
    return tau.unsqueeze(2) + tau.unsqueeze(1)


def certified_accuracy(radius: Tensor, radii: Tensor | list[float]) -> Tensor:
    """Fraction of samples whose certified radius is at least r, for each r in ``radii``.

    ``radius`` comes from :func:`certified_margin` with target = the label, so misclassified
    samples (negative radius) never count. Returns float32 (len(radii),).
    """
    r = torch.as_tensor(radii, dtype=radius.dtype, device=radius.device)
    if radius.numel() == 0:
        return torch.full(r.shape, math.nan, dtype=torch.float32, device=radius.device)
    ok = (radius.unsqueeze(0) >= r.unsqueeze(1)) & (radius.unsqueeze(0) > 0)
    return ok.float().mean(dim=1)


# ---------------------------------------------------------------- custom-op registrations
@torch.library.custom_op("mmfast::certified_margin_triton", mutates_args=())
def _certified_margin_triton(
    z: Tensor, target: Tensor, lip: Tensor, mask: Tensor | None, bias: Tensor | None,
    q: float, top_rival: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    return _registry.triton_launcher(OP, "forward")(z, target, lip, mask, bias, q, top_rival)


@torch.library.custom_op("mmfast::_certified_margin_backward_triton", mutates_args=())
def _certified_margin_backward_triton(
    grad_radius: Tensor, grad_margin: Tensor, z: Tensor, target: Tensor, lip: Tensor,
    mask: Tensor | None, margin: Tensor, runner_up: Tensor, q: float,
) -> tuple[Tensor, Tensor]:
    return _registry.triton_launcher(OP, "backward")(
        grad_radius, grad_margin, z, target, lip, mask, margin, runner_up, q
    )


def _fake(z, target, lip, mask, bias, q, top_rival):
    B = z.shape[0]
    acc = opmath_dtype(z.dtype)
    return z.new_empty(B, dtype=acc), z.new_empty(B, dtype=acc), target.new_empty(B)


def _fake_backward(grad_radius, grad_margin, z, target, lip, mask, margin, runner_up, q):
    B, M, _ = z.shape
    return torch.empty_like(z), z.new_empty(B, M, dtype=opmath_dtype(z.dtype))


def _setup_context(ctx, inputs, output):
    z, target, lip, mask, bias, q, _top = inputs
    _radius, margin, runner_up = output
    ctx.save_for_backward(z, target, lip, mask, margin, runner_up)
    ctx.q = q
    ctx.has_bias = bias is not None
    ctx.mark_non_differentiable(runner_up)


def _rival_denominator(lip: Tensor, mask: Tensor | None, target: Tensor, rival: Tensor, q: float):
    """den_b = ||mask_b * lip[:, y_b, k_b]||_q (for the bias gradient)."""
    B, M = target.shape[0], lip.shape[0]
    sel = lip.view(1, M).expand(B, M) if lip.dim() == 1 else lip[:, target, rival].t()
    if mask is not None:
        sel = sel * mask.to(sel.dtype)
    return reference._safe_norm(sel, q, dim=1)


def _backward(suffix: str):
    def backward(ctx, grad_radius, grad_margin, _grad_runner_up):
        z, target, lip, mask, margin, runner_up = ctx.saved_tensors
        gr = torch.zeros_like(margin) if grad_radius is None else grad_radius.contiguous()
        gm = torch.zeros_like(margin) if grad_margin is None else grad_margin.contiguous()
        grad_z, grad_sel = getattr(torch.ops.mmfast, f"_certified_margin_backward{suffix}")(
            gr, gm, z, target, lip, mask, margin, runner_up, ctx.q
        )
        valid = runner_up >= 0
        grad_lip = grad_bias = None
        if ctx.needs_input_grad[2]:
            if lip.dim() == 1:
                grad_lip = grad_sel.sum(dim=0)
            else:  # scatter d/d lip_m[y_b, k_b] without a host sync (rows with no rival add 0)
                M, C = lip.shape[0], lip.shape[1]
                k = runner_up.clamp(min=0)
                flat = ((torch.arange(M, device=z.device).unsqueeze(0) * C
                         + target.unsqueeze(1)) * C + k.unsqueeze(1))
                sel = torch.where(valid.unsqueeze(1), grad_sel, torch.zeros_like(grad_sel))
                grad_lip = (torch.zeros(lip.numel(), dtype=grad_sel.dtype, device=z.device)
                            .index_add_(0, flat.reshape(-1), sel.reshape(-1)).view(lip.shape))
        if ctx.has_bias and ctx.needs_input_grad[4]:
            k = runner_up.clamp(min=0)
            den = _rival_denominator(lip, mask, target, k, ctx.q)
            coef = torch.where(den > 0, gr / torch.where(den > 0, den, torch.ones_like(den)),
                               torch.zeros_like(den)) + gm
            coef = torch.where(valid, coef, torch.zeros_like(coef))
            C = z.shape[2]
            grad_bias = (torch.zeros(C, dtype=coef.dtype, device=z.device)
                         .index_add_(0, target, coef).index_add_(0, k, -coef))
        return grad_z, None, grad_lip, None, grad_bias, None, None

    return backward


_registry.register(OP, _fake, setup_context=_setup_context, backward=_backward)
_registry.register("_certified_margin_backward", _fake_backward)
