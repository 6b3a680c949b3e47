"""masked_fusion: weighted fusion of per-modality features or logits under a presence mask.

y_b = sum_m w_bm x_bm / denom_b with w = weight * mask and denom_b = sum_m w_bm (rows with no
modality present give 0). The fusion step of late fusion (UME-MMA), CRMT's joint head, UDML's
dynamic weights and missing-modality evaluation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mmfast.ops import _registry, _validate, reference
from mmfast.ops._dispatch import choose_backend
from mmfast.ops.reference import opmath_dtype
from mmfast.ops.results import MaskedFusionResult

__all__ = ["masked_fusion", "MaskedFusionResult"]
OP = "masked_fusion"


def masked_fusion(
    x: Tensor,
    mask: Tensor | None = None,
    weight: Tensor | None = None,
    normalize: bool = True,
    *,
    backend: str | None = None,
) -> MaskedFusionResult:
    """Fuse M modalities of x (B, M, D) into y (B, D).

    Args:
        x: (B, M, D) float16/bfloat16/float32/float64 features or logits.
        mask: (B, M) bool, True where the modality is present; None = all present. Absent
            modalities are never read (NaN or inf there reaches no output or gradient).
        weight: finite non-negative fusion weights (differentiable), either per modality,
            None, (M,) or (B, M), or per class / feature, (M, D) or (B, M, D) (CRMT's
            integration weights a_k^(m)). A (B, M) shape is read per modality even when
            B = M and D = M. Per-class weights run the reference composition (plain PyTorch:
            differentiable and torch.compile-able on every device); the fused kernels take
            per-modality weights only.
        normalize: divide by the sum of the present weights (a weighted mean); else a sum.
        backend: "auto" (default, or $MMFAST_BACKEND), "cpp", "cuda", "triton", "reference".

    Returns:
        :class:`MaskedFusionResult` ``(y, denom)``: y (B, D) in x's dtype; denom = sum of the
        present weights, (B,) (or (B, D) for per-class weights), float32 (float64 for float64
        x), not differentiable on the kernel backends. The module :class:`mmfast.nn.MaskedFusion`
        returns y alone.
    """
    _validate.floating(OP, "x", x, ("B", "M", "D"))
    B, M, D = x.shape
    _validate.modality_count(OP, "x", M)
    if mask is None:
        mask = torch.ones(B, M, dtype=torch.bool, device=x.device)
    else:
        _validate.boolean(OP, "mask", mask, (B, M), device=x.device)
    name = choose_backend(OP, x.device, backend, x.shape)
    check = _validate.value_checks(name)
    if weight is not None and _per_class(weight, B, M, D):
        w = _validate.weight_tensor(OP, weight, x.device)
        if check:
            _validate.finite_nonnegative(OP, "weight", w)
        return MaskedFusionResult(*reference.masked_fusion(x, mask, w.expand(B, M, D),
                                                            bool(normalize)))
    if isinstance(weight, Tensor) and tuple(weight.shape) not in ((M,), (B, M)):
        raise ValueError(f"{OP}: argument 'weight' expected shape ({M},) or ({B}, {M}) per "
                         f"modality, or ({M}, {D}) or ({B}, {M}, {D}) per class, got "
                         f"{tuple(weight.shape)}")
    w = _validate.modality_weight(OP, weight, B, M, x.device, opmath_dtype(x.dtype), check)
    if name == "reference":
        return MaskedFusionResult(*reference.masked_fusion(x, mask, w, bool(normalize)))
    return MaskedFusionResult(*_registry.call(OP, name, x.contiguous(), mask.contiguous(), w,
                                              bool(normalize)))


def _per_class(weight, B: int, M: int, D: int) -> bool:
    """Whether ``weight`` has a per-class shape, (M, D) or (B, M, D) ((B, M) wins a tie)."""
    shape = tuple(getattr(weight, "shape", ()))
    return shape == (B, M, D) or (shape == (M, D) and shape != (B, M))


# ---------------------------------------------------------------- custom-op registrations
@torch.library.custom_op("mmfast::masked_fusion_triton", mutates_args=())
def _masked_fusion_triton(
    x: Tensor, mask: Tensor, weight: Tensor | None, normalize: bool
) -> tuple[Tensor, Tensor]:
    return _registry.triton_launcher(OP, "forward")(x, mask, weight, normalize)


@torch.library.custom_op("mmfast::_masked_fusion_backward_triton", mutates_args=())
def _masked_fusion_backward_triton(
    grad_y: Tensor, x: Tensor, mask: Tensor, weight: Tensor | None, y: Tensor, denom: Tensor,
    normalize: bool, need_grad_weight: bool,
) -> tuple[Tensor, Tensor]:
    return _registry.triton_launcher(OP, "backward")(
        grad_y, x, mask, weight, y, denom, normalize, need_grad_weight
    )


def _fake(x, mask, weight, normalize):
    B, _, D = x.shape
    return x.new_empty(B, D), x.new_empty(B, dtype=opmath_dtype(x.dtype))


def _fake_backward(grad_y, x, mask, weight, y, denom, normalize, need_grad_weight):
    B, M, _ = x.shape
    shape = (B, M) if need_grad_weight else (0,)
    return torch.empty_like(x), x.new_empty(shape, dtype=opmath_dtype(x.dtype))


def _setup_context(ctx, inputs, output):
    x, mask, weight, normalize = inputs
    y, denom = output
    ctx.save_for_backward(x, mask, weight, y, denom)
    ctx.normalize = normalize
    ctx.mark_non_differentiable(denom)


def _backward(suffix: str):
    def backward(ctx, grad_y, _grad_denom):
        x, mask, weight, y, denom = ctx.saved_tensors
        need_w = weight is not None and ctx.needs_input_grad[2]
        grad_x, grad_w = getattr(torch.ops.mmfast, f"_masked_fusion_backward{suffix}")(
            grad_y.contiguous(), x, mask, weight, y, denom, ctx.normalize, need_w
        )
        return (grad_x if ctx.needs_input_grad[0] else None, None,
                grad_w if need_w else None, None)

    return backward


_registry.register(OP, _fake, setup_context=_setup_context, backward=_backward)
_registry.register("_masked_fusion_backward", _fake_backward)
