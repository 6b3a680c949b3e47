"""subset_logits / subset_accuracy: a late-fusion model on every missing-modality pattern.

From one encoder pass (per-modality scores z), score every subset s of modalities as
masked_fusion(z, subsets_s & present, weight). subset_accuracy counts correct predictions per
subset in one pass over z without materialising the (S, B, C) scores.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mmfast.ops import _registry, _validate, reference
from mmfast.ops._dispatch import choose_backend
from mmfast.ops.reference import all_subsets, opmath_dtype

__all__ = ["subset_logits", "subset_accuracy"]


def _arguments(op: str, z, subsets, weight, present, backend):
    """Validated (z, subsets, weight (B, M) opmath or None, present or None, backend name,
    whether to check values)."""
    _validate.floating(op, "z", z, ("B", "M", "C"))
    B, M, _ = z.shape
    _validate.modality_count(op, "z", M)
    if subsets is None:
        subsets = all_subsets(M, z.device)
    else:
        _validate.boolean(op, "subsets", subsets, ("S", M), device=z.device)
    if present is not None:
        _validate.boolean(op, "present", present, (B, M), device=z.device)
        present = present.contiguous()
    name = choose_backend(op, z.device, backend, z.shape)
    check = _validate.value_checks(name)
    w = _validate.modality_weight(op, weight, B, M, z.device, opmath_dtype(z.dtype), check)
    return z, subsets.contiguous(), w, present, name, check


def subset_logits(
    z: Tensor,
    subsets: Tensor | None = None,
    weight: Tensor | None = None,
    present: Tensor | None = None,
    *,
    backend: str | None = None,
) -> Tensor:
    """Fused scores (S, B, C) of every modality subset.

    Args:
        z: (B, M, C) per-modality class scores.
        subsets: (S, M) bool; default all 2^M - 1 non-empty subsets in bitmask order
            (:func:`mmfast.ops.all_subsets`).
        weight: None, (M,) or (B, M) non-negative fusion weights.
        present: (B, M) bool, modalities the sample really has (default all).
        backend: as for the other ops. The kernels are forward-only: when z or weight needs a
            gradient, the differentiable reference is used.
    """
    op = "subset_logits"
    z, subsets, w, present, name, _ = _arguments(op, z, subsets, weight, present, backend)
    wants_grad = z.requires_grad or (w is not None and w.requires_grad)
    if torch.is_grad_enabled() and wants_grad:
        name = "reference"
    if name == "reference":
        return reference.subset_logits(z, subsets, w, present)
    return _registry.call(op, name, z.contiguous(), subsets, w, present)


def subset_accuracy(
    z: Tensor,
    target: Tensor,
    subsets: Tensor | None = None,
    weight: Tensor | None = None,
    present: Tensor | None = None,
    *,
    backend: str | None = None,
) -> Tensor:
    """Accuracy (S,) float32 of the fused prediction of every modality subset.

    Ties go to the lowest class index (as torch.argmax); a subset with nothing present scores
    all classes 0 and so predicts class 0; a row whose fused scores contain NaN counts as
    wrong. An empty batch gives NaN. Arguments as for
    :func:`subset_logits`, plus target (B,) int64 labels.
    """
    op = "subset_accuracy"
    z, subsets, w, present, name, check = _arguments(op, z, subsets, weight, present, backend)
    B, _, C = z.shape
    _validate.tensor(op, "target", target, dims=(B,), dtypes=(torch.int64,), device=z.device)
    if check:
        _validate.index_range(op, "target", target, C)
    with torch.no_grad():
        if name == "reference":
            correct = reference.subset_correct(z, target, subsets, w, present)
        else:
            correct = _registry.call(op, name, z.contiguous(), target.contiguous(), subsets, w,
                                     present)
    if B == 0:
        return torch.full((subsets.shape[0],), math.nan, device=z.device)
    return correct.to(torch.float32) / B


# ---------------------------------------------------------------- custom-op registrations
@torch.library.custom_op("mmfast::subset_logits_triton", mutates_args=())
def _subset_logits_triton(
    z: Tensor, subsets: Tensor, weight: Tensor | None, present: Tensor | None
) -> Tensor:
    return _registry.triton_launcher("subset_logits", "subset_logits")(z, subsets, weight, present)


@torch.library.custom_op("mmfast::subset_accuracy_triton", mutates_args=())
def _subset_accuracy_triton(
    z: Tensor, target: Tensor, subsets: Tensor, weight: Tensor | None, present: Tensor | None
) -> Tensor:
    return _registry.triton_launcher("subset_accuracy", "subset_accuracy")(
        z, target, subsets, weight, present)


def _fake_logits(z, subsets, weight, present):
    return z.new_empty(subsets.shape[0], z.shape[0], z.shape[2])


def _fake_accuracy(z, target, subsets, weight, present):
    return z.new_empty(subsets.shape[0], dtype=torch.int64)


_registry.register("subset_logits", _fake_logits)
_registry.register("subset_accuracy", _fake_accuracy)
